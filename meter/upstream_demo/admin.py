"""The demo upstream's Admin API: Anthropic's usage and cost reports (reports.py) over what it
answered (record.py), behind the admin key, plus a test control that makes them wrong on purpose.

- `GET /v1/organizations/usage_report/messages` and `GET /v1/organizations/cost_report`: need the
  admin key in `x-api-key` (an operator's API key is refused, as Anthropic refuses it) and
  `anthropic-version`.
- `POST /_demo/report-adjustments` with `{"model": "claude-sonnet-4-6", "day": "2026-12-03",
  "usd": "1.25", "output_tokens": 100}` (`usd` and `output_tokens` default to 0, either may be
  negative): from then on the usage report counts `output_tokens` more output tokens and the cost
  report `usd` more dollars for that model on that UTC day, as standard-tier output tokens billed at
  00:00. Adjustments add up. `GET` lists them, `DELETE` removes them all.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from meter.upstream_demo import reports, wire
from meter.upstream_demo.errors import DemoError, invalid_request
from meter.upstream_demo.record import Adjustment, Record
from meter.upstream_demo.responses import error_response, json_response

ADJUSTMENT_FIELDS = frozenset({"model", "day", "usd", "output_tokens"})


class AdminApi:
    def __init__(self, record: Record, admin_key: str, seen: deque[tuple[str, str]]) -> None:
        self.record = record
        self.admin_key = admin_key
        self._seen = seen

    def _check(self, request: web.Request) -> None:
        self._seen.append((request.method, request.raw_path))
        if request.headers.get("x-api-key") != self.admin_key:
            raise DemoError(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            raise invalid_request("anthropic-version: header is required")

    @staticmethod
    def _group_by(request: web.Request) -> list[str]:
        return [*request.query.getall("group_by[]", []), *request.query.getall("group_by", [])]

    async def usage_report(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            self._check(request)
            report = reports.usage_report(self.record, request.query, self._group_by(request))
        except DemoError as error:
            return error_response(error, request_id)
        return json_response(wire.dumps(report), request_id)

    async def cost_report(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            self._check(request)
            report = reports.cost_report(self.record, request.query, self._group_by(request))
        except DemoError as error:
            return error_response(error, request_id)
        return json_response(wire.dumps(report), request_id)

    # /_demo/report-adjustments

    async def list_adjustments(self, request: web.Request) -> web.Response:
        listed = [adjustment.as_json() for adjustment in self.record.adjustments]
        return json_response(wire.dumps({"adjustments": listed}), wire.new_request_id())

    async def add_adjustment(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            adjustment = _adjustment(await request.read())
        except DemoError as error:
            return error_response(error, request_id)
        self.record.adjustments.append(adjustment)
        return json_response(wire.dumps(adjustment.as_json()), request_id, status=201)

    async def clear_adjustments(self, request: web.Request) -> web.Response:
        self.record.adjustments.clear()
        return json_response(wire.dumps({"adjustments": []}), wire.new_request_id())


def _adjustment(raw: bytes) -> Adjustment:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        raise invalid_request("expected a JSON object") from None
    if not isinstance(body, dict):
        raise invalid_request("expected a JSON object")
    if unknown := sorted(set(body) - ADJUSTMENT_FIELDS):
        raise invalid_request(f"unknown fields: {unknown}")
    model, day, usd, tokens = body.get("model"), body.get("day"), body.get("usd", "0"), body.get("output_tokens", 0)
    if not isinstance(model, str) or not model:
        raise invalid_request("model: a model id is required")
    try:
        when = date.fromisoformat(day) if isinstance(day, str) else None
    except ValueError:
        when = None
    if when is None:
        raise invalid_request("day: expected YYYY-MM-DD")
    try:
        amount = Decimal(usd) if isinstance(usd, str | int) and not isinstance(usd, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise invalid_request('usd: expected a decimal string such as "1.25"')
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise invalid_request("output_tokens: expected an integer")
    return Adjustment(model, when, amount, tokens)
