"""Reconciliation end to end: honest traffic through a meter process to the demo upstream with the
real `anthropic` and `openai` SDKs (several models, JSON and streams split anywhere, web searches,
cache writes of both TTLs and late ones, batch, priority, US geo, fast mode, long context,
compaction, an unpriced model, a failure), then `meter reconcile` as a subprocess finds the ledger
and the upstream's own usage and cost reports in agreement, bucket by bucket, with the token totals
the test sent; a discrepancy injected at the upstream is reported, exactly, with exit status 1; the
background job exports it as a gauge; and of two meter processes of one database only one
reconciles, until it stops."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from meter.db import migrate
from meter.upstream_demo.config import DEFAULT_ADMIN_API_KEY
from tests.support import Admin, Ledger, Process, create_database, eventually, sample, start_demo_upstream, start_meter

KINDS = (
    "uncached_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "web_search_requests",
)
RECONCILE_ENV = {
    "METER_UPSTREAM_ADMIN_KEY": DEFAULT_ADMIN_API_KEY,
    "METER_RECONCILE_INTERVAL_S": "0.5",
    "METER_BATCH_POLL_S": "0.2",
}
DRIFT, LAST_SUCCESS = "meter_reconcile_drift_usd", "meter_reconcile_last_success_timestamp_seconds"
UNPRICED = "claude-unpriced-recon-model"
ZERO_DRIFT = {**dict.fromkeys(KINDS, 0), "usd": "0.00"}
CACHED_1H_SYSTEM = [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


@dataclass(frozen=True)
class Call:
    """One call, and the counters the upstream bills it for (what the test asks the demo to answer)."""

    model: str
    stream: bool
    input: int
    output: int
    controls: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    billed: dict[str, int] = field(default_factory=dict)  # counters beyond input and output

    def counts(self) -> Counter[str]:
        return Counter({"uncached_input_tokens": self.input, "output_tokens": self.output, **self.billed})


CALLS = [
    Call("claude-sonnet-4-6", False, 1000, 20, {"x-demo-web-search": "3", "x-demo-cache-read": "1000",
         "x-demo-cache-write-5m": "200"},
         billed={"web_search_requests": 3, "cache_read_input_tokens": 1000, "cache_creation_5m_input_tokens": 200}),
    Call("claude-sonnet-4-6", True, 1100, 30, {"x-demo-web-search": "2", "x-demo-cache-write-1h": "50",
         "x-demo-split": "11"}, billed={"web_search_requests": 2, "cache_creation_1h_input_tokens": 50}),
    # 400 writes only message_delta reports: at 1h, since the request asked for a 1h cache
    Call("claude-sonnet-4-6", True, 1200, 10, {"x-demo-cache-write-1h": "100", "x-demo-cache-write-late": "400"},
         {"system": CACHED_1H_SYSTEM}, billed={"cache_creation_1h_input_tokens": 500}),
    Call("claude-haiku-4-5", False, 2000, 40, {"x-demo-service-tier": "batch"}),
    Call("claude-haiku-4-5", True, 2100, 15, {"x-demo-service-tier": "priority", "x-demo-split": "5"}),
    Call("claude-opus-4-6", False, 3000, 25, body={"inference_geo": "us"}),
    Call("claude-opus-4-8", True, 4000, 12, {"x-demo-speed": "fast"}, {"speed": "fast"}),
    Call("claude-sonnet-4-5", False, 200_001, 5),  # long-context prices
    # a compaction step of 9,000 in and 700 out before the message step
    Call("claude-opus-4-7", True, 9500, 708, {"x-demo-input-tokens": "500", "x-demo-output-tokens": "8",
         "x-demo-iterations": "compaction", "x-demo-compaction-input": "9000", "x-demo-compaction-output": "700"}),
    Call(UNPRICED, False, 10, 3),
]  # fmt: skip
CHAT = Call("claude-haiku-4-5", False, 700, 9)  # through the OpenAI-compatible endpoint
# A message batch of three such requests, billed from its results at the batch tier.
BATCHED = Call("claude-sonnet-4-6", False, 800, 11)
BATCH_SIZE = 3


@pytest.fixture(scope="module")
def recon_database(postgres_server: str) -> str:
    url = create_database(postgres_server, f"meter_recon_{os.getpid()}_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def recon_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_demo_upstream(tmp_path_factory.mktemp("recon-upstream"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def recon_meter(
    recon_database: str, recon_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    process = start_meter(
        recon_database, recon_upstream.base_url, tmp_path_factory.mktemp("recon-meter"), **RECONCILE_ENV
    )
    yield process
    process.stop()


def send(call: Call, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI) -> str:
    """Make one call; its x-meter-request-id."""
    headers = {"x-demo-input-tokens": str(call.input), "x-demo-output-tokens": str(call.output), **call.controls}
    messages: Any = [{"role": "user", "content": "Reconcile me."}]
    if call is CHAT:
        raw = openai_client.chat.completions.with_raw_response.create(
            model=call.model, messages=messages, max_tokens=64, extra_headers=headers
        )
        return raw.headers["x-meter-request-id"]
    params: dict[str, Any] = {"model": call.model, "max_tokens": 64, "messages": messages, "extra_headers": headers}
    if call.body:
        params["extra_body"] = call.body
    if call.stream:
        with anthropic_client.messages.stream(**params) as stream:
            final = stream.get_final_message()
            request_id = stream.response.headers["x-meter-request-id"]
    else:
        raw_message = anthropic_client.messages.with_raw_response.create(**params)
        final, request_id = raw_message.parse(), raw_message.headers["x-meter-request-id"]
    assert final.usage.output_tokens == int(headers["x-demo-output-tokens"]), final.usage
    return request_id


@pytest.fixture(scope="module")
def sent(recon_meter: Process, recon_database: str) -> dict[str, Counter[str]]:
    """The traffic, once per module, recorded in the ledger; the counters sent, by model."""
    admin = Admin(recon_meter.base_url)
    key = admin.issue_key(admin.create_tenant("reconciled")["id"], name="recon")["key"]
    ledger = Ledger(recon_database)
    with (
        anthropic.Anthropic(base_url=recon_meter.base_url, api_key=key, max_retries=0) as sdk,
        openai.OpenAI(base_url=recon_meter.base_url + "/v1", api_key=key, max_retries=0) as chat,
    ):
        request_ids = [send(call, sdk, chat) for call in [*CALLS, CHAT]]
        controls = {
            "x-demo-input-tokens": str(BATCHED.input),
            "x-demo-output-tokens": str(BATCHED.output),
            "x-demo-batch-seconds": "0.2",
        }
        question: Any = [{"role": "user", "content": "Reconcile me."}]
        batch_requests: Any = [
            {"custom_id": f"b{i}", "params": {"model": BATCHED.model, "max_tokens": 64, "messages": question}}
            for i in range(BATCH_SIZE)
        ]
        batch = sdk.messages.batches.create(requests=batch_requests, extra_headers=controls)
        with pytest.raises(anthropic.APIStatusError):  # a failure bills nothing on either side
            sdk.messages.create(
                model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-demo-error": "529"},
            )  # fmt: skip
    for request_id in request_ids:
        row = ledger.row(request_id)
        assert row["status"] == 200 and not row["partial"], row

    def batch_billed() -> bool:
        rows = [r for r in ledger.rows(endpoint="batches") if r["upstream_request_id"].startswith(batch.id)]
        return len(rows) == BATCH_SIZE and all(r["service_tier"] == "batch" for r in rows)

    eventually(batch_billed, 30, "the batch's results billed")
    totals: dict[str, Counter[str]] = {}
    for call in [*CALLS, CHAT, *[BATCHED] * BATCH_SIZE]:
        totals.setdefault(call.model, Counter()).update(call.counts())
    return totals


def days() -> tuple[str, str]:
    """Yesterday to tomorrow (exclusive): the traffic's day, even if it crossed midnight."""
    today = datetime.now(UTC).date()
    return (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()


def reconcile(database_url: str, upstream: Process, *args: str) -> subprocess.CompletedProcess[str]:
    start, end = days()
    return subprocess.run(
        [sys.executable, "-m", "meter", "reconcile", "--from", start, "--to", end, *args],
        env={
            **os.environ,
            "METER_DATABASE_URL": database_url,
            "METER_UPSTREAM_URL": upstream.base_url,
            "METER_UPSTREAM_ADMIN_KEY": DEFAULT_ADMIN_API_KEY,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def by_model(buckets: list[dict[str, Any]], side: str) -> dict[str, Counter[str]]:
    totals: dict[str, Counter[str]] = {}
    for bucket in buckets:
        totals.setdefault(bucket["model"], Counter()).update({kind: bucket[side][kind] for kind in KINDS})
    return {model: +counts for model, counts in totals.items() if +counts}


def test_the_ledger_agrees_with_the_upstreams_reports(
    sent: dict[str, Counter[str]], recon_database: str, recon_upstream: Process
) -> None:
    done = reconcile(recon_database, recon_upstream, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["over_threshold"] == [] and report["threshold_usd"] == "0.01"
    buckets = report["buckets"]
    for bucket in buckets:
        assert bucket["drift"] == ZERO_DRIFT and not bucket["over_threshold"], bucket
    # Both sides counted exactly what was sent, model by model.
    assert by_model(buckets, "upstream") == by_model(buckets, "ledger") == {m: +c for m, c in sent.items()}
    models = {bucket["model"]: bucket for bucket in buckets}
    assert models.keys() == {*sent, "(web_search)"}
    # Five searches at $0.01, in the model-less line the cost report has them in.
    assert models["(web_search)"]["upstream"]["usd"] == models["(web_search)"]["ledger"]["usd"] == "0.05"
    # Money was compared, not zeros: e.g. Opus 4.6 in the US, 3000 x $5 + 25 x $25 per million, x 1.1.
    assert Decimal(models["claude-opus-4-6"]["ledger"]["usd"]) == (3000 * 5 + 25 * 25) * Decimal("1.1") / 10**6
    # What the cost report leaves out is shown, not compared: the priority tier, an unpriced model.
    haiku = models["claude-haiku-4-5"]
    assert Decimal(haiku["ledger"]["priority_usd"]) == (2100 * 1 + 15 * 5) / Decimal(10**6)
    assert haiku["ledger"]["requests"] == 3 and any("priority" in note for note in haiku["notes"])
    unpriced = models[UNPRICED]
    assert unpriced["ledger"]["usd"] is None and unpriced["ledger"]["unpriced_requests"] == 1
    assert unpriced["upstream"]["usd"] == "0.00" and unpriced["drift"]["usd"] == "0.00"


def test_an_injected_discrepancy_is_reported_exactly(
    sent: dict[str, Counter[str]], recon_database: str, recon_upstream: Process
) -> None:
    today = datetime.now(UTC).date().isoformat()
    adjustment = {"model": "claude-opus-4-7", "day": today, "usd": "0.37", "output_tokens": 250}
    assert httpx.post(recon_upstream.base_url + "/_demo/report-adjustments", json=adjustment).status_code == 201
    try:
        done = reconcile(recon_database, recon_upstream, "--format", "json")
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["over_threshold"] == [{"day": today, "model": "claude-opus-4-7"}]
        (bucket,) = [b for b in report["buckets"] if b["drift"] != ZERO_DRIFT]
        assert (bucket["day"], bucket["model"]) == (today, "claude-opus-4-7")
        assert bucket["drift"] == {**dict.fromkeys(KINDS, 0), "output_tokens": 250, "usd": "0.37"}
        table = reconcile(recon_database, recon_upstream)
        assert table.returncode == 1
        assert f"1 over the $0.01 threshold: {today} claude-opus-4-7 (+$0.37)" in table.stdout
        csv = reconcile(recon_database, recon_upstream, "--format", "csv")
        assert csv.returncode == 1 and "claude-opus-4-7 (+$0.37)" in csv.stderr
        assert csv.stdout.splitlines()[0].startswith("day,model,requests,input_drift,write_5m_drift")
    finally:
        assert httpx.delete(recon_upstream.base_url + "/_demo/report-adjustments").status_code == 200
    assert reconcile(recon_database, recon_upstream).returncode == 0


def test_the_background_job_exports_the_drift(
    sent: dict[str, Counter[str]], recon_meter: Process, recon_upstream: Process
) -> None:
    assert eventually(lambda: sample(recon_meter.metrics_url, LAST_SUCCESS), waiting_for="a reconciliation")
    today = datetime.now(UTC).date().isoformat()
    adjustment = {"model": "claude-sonnet-4-6", "day": today, "usd": "-1.5"}
    assert httpx.post(recon_upstream.base_url + "/_demo/report-adjustments", json=adjustment).status_code == 201
    try:
        eventually(lambda: sample(recon_meter.metrics_url, DRIFT, model="claude-sonnet-4-6") == -1.5, 30, "the drift")
        assert sample(recon_meter.metrics_url, DRIFT, model="claude-haiku-4-5") == 0
        # A model outside meter's price table is "other"; a model-less cost line keeps its name.
        assert sample(recon_meter.metrics_url, DRIFT, model="other") == 0
        assert sample(recon_meter.metrics_url, DRIFT, model="(web_search)") == 0
        assert sample(recon_meter.metrics_url, DRIFT, model=UNPRICED) is None
    finally:
        assert httpx.delete(recon_upstream.base_url + "/_demo/report-adjustments").status_code == 200
    eventually(lambda: sample(recon_meter.metrics_url, DRIFT, model="claude-sonnet-4-6") == 0, 30, "no drift")
    assert sample(recon_meter.metrics_url, "meter_reconcile_errors_total") == 0


def reconciled_after(meter: Process, moment: float) -> float:
    """When `meter` last reconciled, once that is after `moment`."""

    def later() -> float | None:
        done = sample(meter.metrics_url, LAST_SUCCESS)
        return done if done is not None and done > moment else None

    return eventually(later, 30, f"{meter.base_url} to reconcile")


def test_one_meter_process_of_a_database_reconciles_at_a_time(
    postgres_server: str, recon_upstream: Process, tmp_path: Path
) -> None:
    database = create_database(postgres_server, f"meter_lock_{os.getpid()}_{secrets.token_hex(3)}")
    migrate.upgrade(database)
    first = start_meter(database, recon_upstream.base_url, tmp_path / "first", **RECONCILE_ENV)
    second: Process | None = None
    try:
        reconciled = reconciled_after(first, 0)
        second = start_meter(database, recon_upstream.base_url, tmp_path / "second", **RECONCILE_ENV)
        # While the first reconciles again and again, the second (trying as often) never does.
        for _ in range(3):
            reconciled = reconciled_after(first, reconciled)
        assert sample(second.metrics_url, LAST_SUCCESS) == 0
        assert sample(second.metrics_url, "meter_reconcile_errors_total") == 0
        first.stop()
        # Its session ended, and the lock with it: the second takes over.
        reconciled_after(second, 0)
    finally:
        first.stop()
        if second is not None:
            second.stop()
