"""The upstream fails in every way it can, all at once: connection reset, timeout, a 529 storm the
SDK retries through, a slow answer, an error mid-stream and a connection cut mid-stream. Every
attempt meter forwarded has exactly one ledger row, saying what happened."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx

from tests.faults.traffic import BODY, tenant_headers
from tests.support import Admin, Ledger, Process, eventually, start_meter

# (x-demo-* controls, stream?) of each fault, and what its row must say.
FAULTS: dict[str, tuple[dict[str, str], bool]] = {
    "reset": ({"x-demo-error": "drop"}, False),
    "timeout": ({"x-demo-latency-ms": "4000"}, False),
    "slow": ({"x-demo-latency-ms": "1000"}, False),
    "midstream": ({"x-demo-error": "midstream", "x-demo-tokens-per-second": "100"}, True),
    "cut": ({"x-demo-error": "drop", "x-demo-tokens-per-second": "100"}, True),
}
EXPECTED: dict[str, Callable[[dict[str, Any]], bool]] = {
    "reset": lambda row: row["status"] == 502 and row["cost_usd"] == 0,
    "timeout": lambda row: row["status"] == 504 and row["cost_usd"] == 0,
    "slow": lambda row: row["status"] == 200 and not row["partial"] and row["cost_usd"] > 0,
    "midstream": lambda row: row["status"] == 200 and row["partial"] and row["error_type"] == "overloaded_error",
    "cut": lambda row: row["status"] == 200 and row["partial"] and row["error_type"] == "upstream_disconnected",
}
CALLS_PER_FAULT = 3
STORM_CALLS, SDK_RETRIES = 3, 2


def test_every_upstream_fault_has_its_row(database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path, METER_UPSTREAM_READ_TIMEOUT_S="2")
    try:
        tenant_id, headers = tenant_headers(Admin(meter.base_url))
        seen: list[tuple[str, str]] = []  # (fault, x-meter-request-id)

        def call(fault: str) -> None:
            controls, stream = FAULTS[fault]
            body = {**BODY, "stream": stream}
            with httpx.stream(
                "POST", meter.base_url + "/v1/messages", json=body, headers={**headers, **controls}, timeout=30
            ) as reply:
                reply.read()
                seen.append((fault, reply.headers["x-meter-request-id"]))

        def storm() -> None:
            client = anthropic.Anthropic(
                base_url=meter.base_url,
                api_key=headers["x-api-key"],
                max_retries=SDK_RETRIES,
                default_headers={"x-demo-error": "529"},
            )
            # Every attempt is a 529: the SDK gives up, as it should.
            with client, contextlib.suppress(anthropic.OverloadedError):
                client.messages.create(**BODY)  # type: ignore[call-overload]

        threads = [threading.Thread(target=call, args=(fault,)) for fault in FAULTS for _ in range(CALLS_PER_FAULT)]
        threads += [threading.Thread(target=storm) for _ in range(STORM_CALLS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(seen) == len(FAULTS) * CALLS_PER_FAULT
        rows = {row["request_id"]: row for row in ledger.rows()}
        for fault, request_id in seen:
            row = ledger.row(request_id) if request_id not in rows else rows[request_id]
            assert EXPECTED[fault](row), (fault, {k: row[k] for k in ("status", "partial", "error_type", "cost_usd")})
        # Each attempt of the storm is a row of its own: 529, free.
        storm_rows = STORM_CALLS * (1 + SDK_RETRIES)

        def tenant_rows() -> list[dict[str, Any]] | None:
            found = ledger.rows(tenant_id=tenant_id)
            return found if len(found) >= len(seen) + storm_rows else None

        found = eventually(tenant_rows, 15, "a row for every attempt")
        overloaded = [row for row in found if row["status"] == 529]
        assert len(found) == len(seen) + storm_rows
        assert len(overloaded) == storm_rows
        assert all(row["cost_usd"] == Decimal(0) and row["error_type"] == "overloaded_error" for row in overloaded)
    finally:
        meter.stop()
