"""Soak: mixed traffic against one meter for a long time, with a `kill -9` of meter every few
minutes, sampling its resident memory and spool size; at the end, every answered request's row
must be in the ledger.

    .venv/bin/python bench/soak.py --duration 1800 --rate 40 --kill-every 300

Traffic, at a constant offered rate: JSON messages, streams (about a second each), streams whose
client leaves halfway, and requests of a tenant with limits (each reserves and settles). After a
kill, meter is started again on the same data directory: the recovery time is from the kill until
every request answered before it has its row (the new process replays the dead one's spool).
Prints a Markdown report and writes it to bench/results/soak.md. Exits 1 if a row is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import memory_kib, running_stack
from tests.support import Ledger, Process, start_meter

RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello there"}]}
STREAM_HEADERS = {"x-demo-output-tokens": "40", "x-demo-tokens-per-second": "40"}


@dataclass
class Soak:
    base_url: str
    keys: list[str]
    answered: set[str] = field(default_factory=set)  # every 200 a client read to its end
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (529 while restarting...)
    unreachable: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # HTTP errors the client saw, by class
    left_early: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, RSS KiB, spool bytes, pid
    recoveries: list[tuple[float, float, int]] = field(default_factory=list)  # ready s, rows in s, rows waited
    in_flight: int = 0
    drained: tuple[int, float] = (0, 0.0)  # spool bytes once traffic stopped, and how long that took


async def one_request(soak: Soak, client: httpx.AsyncClient, kind: str) -> None:
    key = soak.keys[1] if kind == "limited" else soak.keys[0]
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    stream = kind in ("stream", "leave")
    body = {**BODY, "stream": True} if stream else BODY
    soak.in_flight += 1
    try:
        if not stream:
            response = await client.post(soak.base_url + "/v1/messages", json=body, headers=headers)
            note(soak, response.status_code, response.headers.get("x-meter-request-id"))
            return
        async with client.stream(
            "POST", soak.base_url + "/v1/messages", json=body, headers={**headers, **STREAM_HEADERS}
        ) as response:
            if response.status_code != 200:
                note(soak, response.status_code, None)
                return
            text = b""
            async for chunk in response.aiter_bytes():
                text += chunk
                if kind == "leave" and len(text) > 600:
                    soak.left_early += 1
                    return  # leaves mid-stream: meter bills what it reads on
            if b"message_stop" in text:
                note(soak, 200, response.headers.get("x-meter-request-id"))
    except httpx.HTTPError as exc:
        soak.unreachable += 1  # meter was killed under it, or not up yet: not answered
        soak.failures[type(exc).__name__] = soak.failures.get(type(exc).__name__, 0) + 1
    finally:
        soak.in_flight -= 1


def note(soak: Soak, status: int, request_id: str | None) -> None:
    if status == 200 and request_id:
        soak.answered.add(request_id)
    elif status != 200:
        soak.refused[status] = soak.refused.get(status, 0) + 1


async def offer(soak: Soak, rate: float, until: float) -> None:
    """Requests at `rate`/s, whatever the answers take (open loop), of every kind."""
    kinds = ["json"] * 5 + ["stream"] * 3 + ["leave", "limited"]
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        sent = 0
        while time.monotonic() < until:
            due = started + sent / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(one_request(soak, client, random.choice(kinds)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)


def spool_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in (data_dir / "spool").glob("*.log") if path.exists())


async def sample(soak: Soak, meter: list[Process], data_dir: Path, every_s: float, until: float) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        pid = meter[0].process.pid
        try:
            rss, _ = memory_kib(pid)
        except (FileNotFoundError, KeyError):
            rss = 0  # between a kill and the restart
        soak.samples.append((time.monotonic() - start, rss, spool_bytes(data_dir), pid))
        await asyncio.sleep(every_s)


async def kill_and_restart(
    soak: Soak, meter: list[Process], restart: Any, ledger: Ledger, every_s: float, until: float
) -> None:
    while time.monotonic() + every_s < until:
        await asyncio.sleep(every_s)
        waited = set(soak.answered)  # answered before the kill: each must get its row
        killed_at = time.monotonic()
        os.kill(meter[0].process.pid, signal.SIGKILL)
        meter[0].process.wait()
        meter[0] = await asyncio.to_thread(restart)
        soak.base_url = meter[0].base_url
        ready = time.monotonic() - killed_at
        while True:
            stored = {row["request_id"] for row in await asyncio.to_thread(ledger.rows)}
            if waited <= stored:
                break
            await asyncio.sleep(0.2)
        soak.recoveries.append((ready, time.monotonic() - killed_at, len(waited)))


def report(soak: Soak, args: argparse.Namespace, lost: int, partial: int, rows: int) -> str:
    samples = soak.samples
    settled = [s for s in samples if s[0] > 60 and s[1] > 0]
    by_pid: dict[int, list[int]] = {}
    for _, rss, _, pid in settled:
        by_pid.setdefault(pid, []).append(rss)
    lines = [
        f"# Soak: {args.duration:.0f} s at {args.rate:g} req/s, kill -9 every {args.kill_every:.0f} s",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests answered 200 (read to the end) | {len(soak.answered):,} |",
        f"| ledger rows after recovery | {rows:,} |",
        f"| **answered requests without a row (lost)** | **{lost}** |",
        f"| answered requests whose row is partial | {partial} |",
        f"| refused (status: count) | {soak.refused or 'none'} |",
        f"| not answered (killed under them, restarting, or an HTTP error) | {soak.unreachable:,} {soak.failures} |",
        f"| streams whose client left halfway | {soak.left_early:,} |",
        f"| kills | {len(soak.recoveries)} |",
    ]
    for number, (ready, rows_in, waited) in enumerate(soak.recoveries, 1):
        lines.append(
            f"| recovery {number}: ready / every answered row in ({waited:,} rows) | {ready:.1f} s / {rows_in:.1f} s |"
        )
    for pid, values in by_pid.items():
        first, peak, last = (value / 1024 for value in (values[0], max(values), values[-1]))
        lines.append(f"| RSS of process {pid}: first / max / last (MiB) | {first:.1f} / {peak:.1f} / {last:.1f} |")
    spools = [s[2] for s in samples]
    lines.append(f"| spool bytes: max / last sample | {max(spools, default=0):,} / {spools[-1] if spools else 0:,} |")
    lines.append(f"| spool once traffic stopped: bytes left / after | {soak.drained[0]:,} / {soak.drained[1]:.1f} s |")
    lines += ["", "Samples (t s, RSS MiB, spool bytes), every minute:", "", "| t | RSS | spool |", "|---|---|---|"]
    shown = [s for s in samples if int(s[0]) % 60 < args.sample_every] or samples
    lines += [f"| {t:.0f} | {rss / 1024:.1f} | {spool:,} |" for t, rss, spool, _ in shown]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of traffic (default 1800)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second offered (default 40)")
    parser.add_argument("--kill-every", type=float, default=300.0, help="kill -9 meter this often (0: never)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS and spool sampling period")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meter-soak-") as workdir, running_stack(Path(workdir)) as stack:
        data_dir = Path(workdir) / "meter"
        database_url = stack.database_url
        meter = [stack.meter]

        def restart() -> Process:
            return start_meter(database_url, stack.upstream.base_url, data_dir)

        soak = Soak(stack.meter.base_url, [stack.tenant_key, stack.limited_key])
        ledger = Ledger(database_url)

        async def run() -> None:
            until = time.monotonic() + args.duration
            jobs = [offer(soak, args.rate, until), sample(soak, meter, data_dir, args.sample_every, until)]
            if args.kill_every:
                jobs.append(kill_and_restart(soak, meter, restart, ledger, args.kill_every, until))
            await asyncio.gather(*jobs)

        asyncio.run(run())
        stopped = time.monotonic()
        while spool_bytes(data_dir) and time.monotonic() < stopped + 60:
            time.sleep(0.1)
        soak.drained = (spool_bytes(data_dir), time.monotonic() - stopped)
        meter[0].stop()  # SIGTERM: it writes what it holds, then the ledger is read
        rows = {row["request_id"]: row for row in ledger.rows()}
        lost = len(soak.answered - rows.keys())
        partial = sum(1 for request_id in soak.answered if request_id in rows and rows[request_id]["partial"])
        text = report(soak, args, lost, partial, len(rows))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
