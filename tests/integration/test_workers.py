"""`meter serve --workers 2`: two processes on one port, metrics summed over both, every row kept."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx

from tests.support import Admin, Ledger, Process, scrape, start_meter

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def test_two_workers_sum_their_metrics(database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path, "--workers", "2")
    try:
        admin = Admin(meter.base_url)
        key = admin.issue_key(admin.create_tenant("workers-co")["id"])

        async def traffic() -> list[httpx.Response]:
            headers = {"x-api-key": key["key"], "anthropic-version": "2023-06-01"}
            # New connections each time, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                return await asyncio.gather(
                    *(client.post(meter.base_url + "/v1/messages", json=BODY, headers=headers) for _ in range(60))
                )

        responses = asyncio.run(traffic())
        assert all(r.status_code == 200 for r in responses)
        rows = [ledger.row(r.headers["x-meter-request-id"]) for r in responses]
        expected_tokens = sum(row["output_tokens"] for row in rows)
        labels: dict[str, Any] = {"tenant": key["tenant_id"], "endpoint": "messages", "status": "200"}
        # The metrics address is served by the parent process, which sums the workers too.
        assert counter(httpx.get(meter.metrics_url).text, "meter_requests_total", **labels) == 60
        for _ in range(6):  # whichever worker answers the scrape reports the sum of both
            text = scrape(meter.base_url)
            assert counter(text, "meter_requests_total", **labels) == 60
            assert counter(text, "meter_tokens_total", tenant=key["tenant_id"], kind="output") == expected_tokens
            assert counter(text, "meter_build_info") >= 1
        assert len(set(re.findall(r'pid="(\d+)"', text))) <= 2
    finally:
        meter.stop()
    assert meter.process.returncode == 0, meter.output()
