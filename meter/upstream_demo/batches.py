"""Message Batches in the demo upstream, in Anthropic's shapes (protocol note, section 6): create,
list (newest first, `limit`/`after_id`/`before_id`), retrieve, cancel, delete and the results file.

A batch ends `batch_seconds` after it was created (DemoConfig, or `x-demo-batch-seconds` on the
creation request). Each request's result is what the Messages endpoint would answer, at the batch
tier (`service_tier: "batch"`), shaped by the creation request's `x-demo-*` controls; a request
whose params are invalid is `errored`. A cancel before the end cancels every request (none had run
yet) and the batch ends at once. `results_url` is absolute, on the host the request came to, as
Anthropic's is: a proxy must rewrite it. Succeeded results enter the usage report when the batch
is created (what the Admin API reports).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from meter.upstream_demo import wire
from meter.upstream_demo.checks import validate_messages_body
from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.controls import Controls, read_controls
from meter.upstream_demo.errors import DemoError, invalid_request
from meter.upstream_demo.record import Record
from meter.upstream_demo.replies import build_reply, random_base62
from meter.upstream_demo.tokens import count_input_tokens
from meter.upstream_demo.usage import reply_usage

LIFETIME_S = 24 * 3600


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Batch:
    id: str
    created_at: float
    ends_at: float
    # (custom_id, result) for each request, in order.
    results: list[tuple[str, dict[str, Any]]]
    cancel_initiated_at: float | None = None
    deleted: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def ended(self, now: float) -> bool:
        return now >= self.ends_at

    def view(self, base: str, now: float) -> dict[str, Any]:
        ended = self.ended(now)
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if ended:
            for _, result in self.results:
                counts[result["type"]] += 1
        else:
            counts["processing"] = len(self.results)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.created_at + LIFETIME_S),
            "ended_at": _iso(self.ends_at) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": _iso(self.cancel_initiated_at),
            "results_url": f"{base}/v1/messages/batches/{self.id}/results" if ended else None,
        }


class DemoBatches:
    def __init__(self, config: DemoConfig, record: Record) -> None:
        self._config = config
        self._record = record
        self._batches: dict[str, Batch] = {}

    def create(self, body: dict[str, Any], headers: Any, base: str) -> bytes:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise invalid_request("requests: Input should be a non-empty list")
        controls = read_controls(headers, self._config)
        raw_seconds = headers.get("x-demo-batch-seconds")
        try:
            seconds = float(raw_seconds) if raw_seconds is not None else self._config.batch_seconds
        except ValueError:
            raise invalid_request("x-demo-batch-seconds: expected a number") from None
        now = time.time()
        results = [self._result(entry, controls, now) for entry in requests]
        ids = [custom_id for custom_id, _ in results]
        if len(set(ids)) != len(ids):
            raise invalid_request("requests: custom_id values must be unique within a batch")
        batch = Batch("msgbatch_01" + random_base62(22), now, now + seconds, results)
        self._batches[batch.id] = batch
        return wire.dumps(batch.view(base, now))

    def _result(self, entry: Any, controls: Controls, now: float) -> tuple[str, dict[str, Any]]:
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            raise invalid_request("requests.custom_id: Field required")
        params = entry.get("params")
        try:
            if not isinstance(params, dict):
                raise invalid_request("params: Input should be a valid dictionary")
            model, max_tokens = _validated(params)
        except DemoError as error:
            failure = {"type": "error", "error": {"type": error.error_type, "message": error.message}}
            return custom_id, {"type": "errored", "error": failure}
        reply = build_reply(params, controls.output_tokens, max_tokens)
        usage = replace(
            reply_usage(params, controls, count_input_tokens(params), reply.output_tokens), service_tier="batch"
        )
        self._record.add(now, model, usage, False)
        message = wire.message_body(wire.new_message_id(), model, reply, usage)
        return custom_id, {"type": "succeeded", "message": wire.loads(message)}

    def find(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.deleted:
            raise DemoError(404, f"No batch with id {batch_id}.")
        return batch

    def page(self, query: Any, base: str) -> bytes:
        now = time.time()
        live = sorted((b for b in self._batches.values() if not b.deleted), key=lambda b: b.created_at, reverse=True)
        ids = [b.id for b in live]
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise invalid_request("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise invalid_request("limit: Input should be between 1 and 1000")
        if "after_id" in query and query["after_id"] in ids:
            window = live[ids.index(query["after_id"]) + 1 :][:limit]
            more = len(live) > ids.index(query["after_id"]) + 1 + limit
        elif "before_id" in query and query["before_id"] in ids:
            end = ids.index(query["before_id"])
            window, more = live[max(0, end - limit) : end], end - limit > 0
        else:
            window, more = live[:limit], len(live) > limit
        data = [b.view(base, now) for b in window]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return wire.dumps({"data": data, "has_more": more, "first_id": first, "last_id": last})

    def cancel(self, batch_id: str, base: str) -> bytes:
        batch, now = self.find(batch_id), time.time()
        if not batch.ended(now):
            batch.cancel_initiated_at, batch.ends_at = now, now
            batch.results = [(custom_id, {"type": "canceled"}) for custom_id, _ in batch.results]
        return wire.dumps(batch.view(base, now))

    def delete(self, batch_id: str) -> bytes:
        batch = self.find(batch_id)
        if not batch.ended(time.time()):
            raise invalid_request(f"Batch {batch_id} cannot be deleted while it is in progress; cancel it first.")
        batch.deleted = True
        return wire.dumps({"id": batch_id, "type": "message_batch_deleted"})

    def results(self, batch_id: str) -> bytes:
        batch = self.find(batch_id)
        if not batch.ended(time.time()):
            raise invalid_request(f"Batch {batch_id} has not ended yet: its results are not available.")
        lines = [wire.dumps({"custom_id": custom_id, "result": result}) for custom_id, result in batch.results]
        return b"\n".join(lines) + b"\n"


def _validated(params: dict[str, Any]) -> tuple[str, int]:
    if params.get("stream") is True:
        raise invalid_request("stream: batch requests cannot stream")
    return validate_messages_body(params)


def base_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
