"""The spool's disk fills up: new calls are refused with 529 `overloaded_error` and `retry-after`
(the SDKs retry it) instead of being served unrecorded, nothing answered is lost, and meter serves
again once there is room."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.faults.traffic import BODY, SlowStream, tenant_headers
from tests.support import Admin, Ledger, Process, eventually, metric, start_meter


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs where meter's spool goes (METER_DATA_DIR/spool)."""
    spool = tmp_path / "meter" / "spool"
    spool.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("the disk-full spool test mounts a 1 MiB tmpfs, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_spool_disk_refuses_with_529_and_loses_nothing(
    database_url: str, upstream: Process, ledger: Ledger, small_disk: Path
) -> None:
    meter = start_meter(database_url, upstream.base_url, small_disk.parent)
    try:
        _, headers = tenant_headers(Admin(meter.base_url))
        key = headers["x-api-key"]
        before = httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers)
        assert before.status_code == 200
        # Its row in Postgres, the spool truncated: the disk is filled after, not before, that.
        eventually(lambda: metric(meter.base_url, "meter_spool_bytes") == 0, 10, "the spool to drain")
        filler = fill(small_disk)
        refused = httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers)
        assert refused.status_code == 529, refused.text
        assert refused.json()["error"]["type"] == "overloaded_error"
        assert refused.headers["retry-after"] == "1"
        with (
            anthropic.Anthropic(base_url=meter.base_url, api_key=key, max_retries=0) as client,
            pytest.raises(anthropic.OverloadedError),
        ):
            client.messages.create(**BODY)  # type: ignore[call-overload]
        assert metric(meter.base_url, "meter_spool_write_errors_total") >= 1
        filler.unlink()
        # Room again: the SDK's own retries (it honours retry-after) get through.
        with anthropic.Anthropic(base_url=meter.base_url, api_key=key, max_retries=5) as client:
            after = client.messages.with_raw_response.create(**BODY)  # type: ignore[call-overload]
        for request_id in (before.headers["x-meter-request-id"], after.headers["x-meter-request-id"]):
            assert ledger.row(request_id)["status"] == 200
        # The refusal is in the ledger too: its row went to Postgres from memory.
        assert ledger.row(refused.headers["x-meter-request-id"])["status"] == 529
        eventually(lambda: metric(meter.base_url, "meter_ledger_queue_depth") == 0, 10, "the ledger to drain")
    finally:
        meter.stop()


def test_a_full_spool_refuses_with_529_until_it_drains(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    """METER_SPOOL_MAX_BYTES: a spool past it (here: one open stream's start) takes no new call."""
    meter = start_meter(database_url, upstream.base_url, tmp_path, METER_SPOOL_MAX_BYTES="1")
    try:
        _, headers = tenant_headers(Admin(meter.base_url))
        slow = SlowStream(meter.base_url, headers, {"x-demo-output-tokens": "40", "x-demo-tokens-per-second": "10"})
        refused = httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers)
        assert refused.status_code == 529 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"]["type"] == "overloaded_error"
        slow.join()  # its row written, nothing open: the spool is truncated and takes calls again
        assert b"message_stop" in slow.received
        eventually(
            lambda: httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers).status_code == 200,
            15,
            "the spool to drain",
        )
        assert ledger.row(slow.request_id)["output_tokens"] == 40
    finally:
        meter.stop()
