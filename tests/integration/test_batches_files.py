"""Message Batches and Files through meter with the real `anthropic` SDK, to the demo upstream: each
tenant sees and touches only its own, results are billed exactly once at the batch price whether
or not they are downloaded (also across a restart of meter), a batch that does not fit the budget
is refused, and a file id of another tenant is refused before anything is forwarded."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.integration.test_cli import meter_cli
from tests.support import OPERATOR_KEY, Admin, Ledger, Process, eventually, metric, start_meter

D = Decimal
HAIKU = {"input": D(1), "output": D(5)}  # USD per million tokens, list price; the batch tier halves it
FILES_BETA = "files-api-2025-04-14"


@pytest.fixture(scope="module")
def batch_meter(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp("batches"), METER_BATCH_POLL_S="0.2")
    yield process
    process.stop()


def tenant(meter: Process, **limits: str) -> tuple[anthropic.Anthropic, dict[str, Any]]:
    admin = Admin(meter.base_url)
    made = admin.create_tenant(f"batcher-{secrets.token_hex(3)}")
    if limits:
        assert admin.request("PUT", f"/admin/tenants/{made['id']}/limits", json=limits).status_code == 200
    key = admin.issue_key(made["id"])
    return anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0), key


def requests(count: int, model: str = "claude-haiku-4-5") -> Any:
    return [
        {
            "custom_id": f"r{i}",
            "params": {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(count)
    ]


def ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    return eventually(
        lambda: (b := client.messages.batches.retrieve(batch_id)).processing_status == "ended" and b,
        30,
        "the batch to end",
    )


def billed_rows(ledger: Ledger, tenant_id: str, count: int) -> list[dict[str, Any]]:
    return eventually(
        lambda: rows if len(rows := ledger.rows(tenant_id=tenant_id, endpoint="batches")) >= count else None,
        30,
        f"{count} billed batch results",
    )


def test_a_batch_round_trip_is_billed_once_at_half_price(
    batch_meter: Process, ledger: Ledger, database_url: str
) -> None:
    client, key = tenant(batch_meter)
    with client:
        invalid: Any = {"custom_id": "bad", "params": {"model": "claude-haiku-4-5", "messages": []}}  # no max_tokens
        batch = client.messages.batches.create(
            requests=[*requests(3), invalid], extra_headers={"x-demo-batch-seconds": "0.5"}
        )
        assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
        done = ended(client, batch.id)
        assert done.results_url.startswith(batch_meter.base_url)  # the SDK follows it: it must be meter's
        assert done.request_counts.succeeded == 3 and done.request_counts.errored == 1
        results = {result.custom_id: result for result in client.messages.batches.results(batch.id)}
        assert results["bad"].result.type == "errored"
        rows = billed_rows(ledger, key["tenant_id"], 4)
        priced = [row for row in rows if row["status"] == 200]
        assert len(priced) == 3 and [row["error_type"] for row in rows if row["status"] != 200] == ["errored"]
        for custom_id in ("r0", "r1", "r2"):
            usage = results[custom_id].result.message.usage  # type: ignore[union-attr]
            assert usage.service_tier == "batch"
            expected = (usage.input_tokens * HAIKU["input"] + usage.output_tokens * HAIKU["output"]) / 1_000_000 / 2
            (row,) = [row for row in priced if row["upstream_request_id"] == f"{batch.id}/{custom_id}"]
            assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
                usage.input_tokens,
                usage.output_tokens,
                expected,
            )
        # Downloading again, retrieving again: nothing is billed twice.
        list(client.messages.batches.results(batch.id))
        client.messages.batches.retrieve(batch.id)
        assert len(ledger.rows(tenant_id=key["tenant_id"], endpoint="batches")) == 4
    # The operator sees it: the CLI's list, a statement line at the batch tier, the metrics.
    (listed,) = meter_cli(database_url, "batches", "list", key["tenant_id"])
    assert (listed["id"], listed["billed_rows"], listed["request_counts"]["succeeded"]) == (batch.id, 4, 3)
    month = priced[0]["started_at"].strftime("%Y-%m")
    lines = (
        Admin(batch_meter.base_url)
        .request("GET", f"/admin/tenants/{key['tenant_id']}/statement", params={"month": month})
        .json()["lines"]
    )
    (line,) = [line for line in lines if line["service_tier"] == "batch"]
    assert (line["requests"], line["multiplier"]) == (3, "0.5")
    assert D(line["cost_usd"]) == sum(row["cost_usd"] for row in priced)
    assert metric(batch_meter.base_url, "meter_batch_results_billed_total") >= 4


def test_results_are_billed_even_if_never_downloaded_and_across_a_restart(
    database_url: str, upstream: Process, tmp_path: Path, ledger: Ledger
) -> None:
    first = start_meter(database_url, upstream.base_url, tmp_path / "a", METER_BATCH_POLL_S="0.2")
    client, key = tenant(first)
    with client:
        batch = client.messages.batches.create(requests=requests(2), extra_headers={"x-demo-batch-seconds": "3"})
    first.stop()  # before the batch ends: nobody bills it while meter is down
    second = start_meter(database_url, upstream.base_url, tmp_path / "b", METER_BATCH_POLL_S="0.2")
    try:
        rows = billed_rows(ledger, key["tenant_id"], 2)
        assert {row["upstream_request_id"] for row in rows} == {f"{batch.id}/r0", f"{batch.id}/r1"}
        assert all(row["cost_usd"] > 0 for row in rows)
    finally:
        second.stop()


def test_another_tenants_batches_are_missing_to_it(batch_meter: Process, upstream: Process, ledger: Ledger) -> None:
    owner, owner_key = tenant(batch_meter)
    other, _ = tenant(batch_meter)
    with owner, other:
        batch = owner.messages.batches.create(requests=requests(1), extra_headers={"x-demo-batch-seconds": "0.3"})
        ended(owner, batch.id)
        billed_rows(ledger, owner_key["tenant_id"], 1)  # meter's own calls about the batch are done
        seen_before = len(httpx.get(upstream.base_url + "/_demo/seen").json()["requests"])
        for attempt in (
            lambda: other.messages.batches.retrieve(batch.id),
            lambda: other.messages.batches.cancel(batch.id),
            lambda: other.messages.batches.delete(batch.id),
            lambda: list(other.messages.batches.results(batch.id)),
        ):
            with pytest.raises(anthropic.NotFoundError):
                attempt()
        with pytest.raises(anthropic.NotFoundError) as foreign:
            other.messages.batches.retrieve(batch.id)
        nobody = "msgbatch_01doesnotexistatall000"
        with pytest.raises(anthropic.NotFoundError) as missing:
            other.messages.batches.retrieve(nobody)
        # Exactly like a missing one: same status, same error, the same words but for the id.
        foreign_error, missing_error = (error_of(caught.value) for caught in (foreign, missing))
        assert foreign_error["type"] == missing_error["type"] == "not_found_error"
        assert foreign_error["message"].replace(batch.id, "ID") == missing_error["message"].replace(nobody, "ID")
        seen = httpx.get(upstream.base_url + "/_demo/seen").json()["requests"][seen_before:]
        assert not [r for r in seen if batch.id in r["path"] or nobody in r["path"]], (
            "a foreign id reached the upstream"
        )
        assert [b.id for b in other.messages.batches.list()] == []
        assert batch.id in [b.id for b in owner.messages.batches.list()]


def error_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    body: Any = error.body
    return dict(body["error"])


def test_lists_page_newest_first(batch_meter: Process) -> None:
    client, _ = tenant(batch_meter)
    with client:
        made = [client.messages.batches.create(requests=requests(1)).id for _ in range(5)]
        first = client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
        everything = [b.id for b in client.messages.batches.list(limit=2)]  # the SDK follows every page
        assert everything == made[::-1]


def test_cancel_and_delete(batch_meter: Process, ledger: Ledger) -> None:
    client, key = tenant(batch_meter)
    with client:
        batch = client.messages.batches.create(requests=requests(2), extra_headers={"x-demo-batch-seconds": "60"})
        canceled = client.messages.batches.cancel(batch.id)
        assert canceled.cancel_initiated_at is not None
        done = ended(client, batch.id)
        assert done.request_counts.canceled == 2
        client.messages.batches.delete(batch.id)
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
        rows = ledger.rows(tenant_id=key["tenant_id"], endpoint="batches")
        assert len(rows) == 2 and all(row["cost_usd"] == 0 for row in rows)  # canceled requests cost nothing


def test_a_batch_larger_than_the_remaining_budget_is_refused(batch_meter: Process, ledger: Ledger) -> None:
    client, key = tenant(batch_meter, budget_usd_per_day="0.001")
    with client, pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.batches.create(requests=requests(50))
    assert "daily budget" in refused.value.message
    restricted = Admin(batch_meter.base_url).issue_key(key["tenant_id"], allowed_models=["claude-sonnet-4-6"])
    sdk = anthropic.Anthropic(base_url=batch_meter.base_url, api_key=restricted["key"], max_retries=0)
    with sdk, pytest.raises(anthropic.PermissionDeniedError):
        sdk.messages.batches.create(requests=requests(1, "claude-haiku-4-5"))


def test_files_are_owned_per_tenant(batch_meter: Process, upstream: Process) -> None:
    owner, owner_key = tenant(batch_meter)
    other, _ = tenant(batch_meter)
    with owner, other:
        uploaded = owner.beta.files.upload(file=("notes.txt", b"hello from a tenant", "text/plain"))
        assert uploaded.filename == "notes.txt" and uploaded.size_bytes == len(b"hello from a tenant")
        assert [f.id for f in owner.beta.files.list()] == [uploaded.id]
        assert owner.beta.files.retrieve_metadata(uploaded.id).id == uploaded.id
        assert owner.beta.files.download(uploaded.id).read() == b"hello from a tenant"
        assert [f.id for f in other.beta.files.list()] == []
        for attempt in (
            lambda: other.beta.files.retrieve_metadata(uploaded.id),
            lambda: other.beta.files.download(uploaded.id).read(),
            lambda: other.beta.files.delete(uploaded.id),
        ):
            with pytest.raises(anthropic.NotFoundError):
                attempt()
        # A message that names another tenant's file is refused, and never forwarded.
        document = {"type": "document", "source": {"type": "file", "file_id": uploaded.id}}
        messages: Any = [{"role": "user", "content": [document, {"type": "text", "text": "summarise"}]}]
        seen_before = len(httpx.get(upstream.base_url + "/_demo/seen").json()["requests"])
        with pytest.raises(anthropic.NotFoundError):
            other.beta.messages.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                messages=messages,
                betas=[FILES_BETA],
            )
        after = httpx.get(upstream.base_url + "/_demo/seen").json()["requests"][seen_before:]
        assert not [r for r in after if r["path"].startswith("/v1/messages?")], after  # batch billing aside
        answer = owner.beta.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=messages,
            betas=[FILES_BETA],
        )
        assert answer.content
        last = httpx.get(upstream.base_url + "/_demo/last-request").json()
        assert last["headers"]["x-api-key"] == OPERATOR_KEY and owner_key["key"] not in json.dumps(last)
        owner.beta.files.delete(uploaded.id)
        assert [f.id for f in owner.beta.files.list()] == []


def test_a_batch_larger_than_a_messages_body_is_streamed_through(batch_meter: Process, ledger: Ledger) -> None:
    """40 MB, past the 32 MB cap of one Messages call and within a batch's 256 MB: meter spools it
    to a file and streams it on, checking each request as it goes."""
    client, key = tenant(batch_meter)
    text = "lorem ipsum " * (10 * 1024 * 1024 // 12)  # 10 MB per request
    big: Any = [
        {"custom_id": f"big{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 5,
                                           "messages": [{"role": "user", "content": text}]}}
        for i in range(4)
    ]  # fmt: skip
    with client:
        batch = client.messages.batches.create(requests=big, extra_headers={"x-demo-batch-seconds": "0.5"})
        assert ended(client, batch.id).request_counts.succeeded == 4
    rows = billed_rows(ledger, key["tenant_id"], 4)
    assert all(row["input_tokens"] > 1_000_000 and row["cost_usd"] > 0 for row in rows)
