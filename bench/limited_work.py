"""The work a limited request adds to meter's own, timed in one process, for A/B between builds on
a machine whose neighbours move req/s by ±15 % or more.

For a tenant without limits and one with every kind, the same objects in interleaved rounds: the
limits stage (worst case, lease take, rate-limit lines, hold), the row spooled at the request's
start, and its end (the hold's end, the settlement, the row spooled and queued). The lease is
granted up front, as meter_lease grants it, so nothing waits for Postgres; the cycle collector is
off while a round is timed (a real server rarely runs it: see YOUNG_GC_OBJECTS in meter/app.py).
What it does not cover: uvicorn's head writing, the upstream client, the ledger statement.

    .venv/bin/python -m bench.limited_work [rounds]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from prometheus_client import CollectorRegistry

from meter.db.engine import create_engine
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.pricing import Price, PriceTable, TokenPrices
from meter.proxy.auth import Caller
from meter.proxy.endpoints import ENDPOINTS
from meter.proxy.estimate import RequestShape
from meter.proxy.exchange import Exchange
from meter.proxy.leases import Lease, Need
from meter.proxy.limits import Limiter
from meter.proxy.recorder import Recorder
from meter.spool import Spool

REQUESTS = 2000  # per round and tenant
MODEL = "claude-sonnet-4-6"
SUBJECTS = ("ten_bench_limited_0001", "key_bench_limited_0001")
USAGE = {
    "input_tokens": 3,
    "output_tokens": 12,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "service_tier": "standard",
    "inference_geo": "not_available",
}
STAGES = ("limits stage", "start row", "end")


async def measure(rounds: int, workdir: Path) -> dict[str, list[tuple[float, float, float]]]:
    metrics = Metrics(CollectorRegistry(), 100, {e.name for e in ENDPOINTS})
    sonnet = Price(MODEL, datetime(2026, 1, 1, tzinfo=UTC), TokenPrices(*map(Decimal, ("3", "15", "3.75", "6", "0.3"))))
    prices = PriceTable([sonnet])
    spool = Spool(workdir / "spool", metrics)
    spool.open()
    never_used = create_engine("postgresql://unused@127.0.0.1:1/unused")  # nothing here reaches Postgres
    ledger = LedgerWriter(never_used, metrics, spool=spool)
    limiter = Limiter(never_used, never_used, prices, metrics, 30.0)
    lease = Lease("lease_bench", SUBJECTS)
    lease.grant(Need(10**15, Decimal(10**9), 10**9, 10.0**12))
    lease.valid_until = time.monotonic() + 10**6
    reset = "2026-12-04T21:00:00+00:00"
    lease.headers = {
        "request_header": {"limit": 10**8, "remaining": 10**8 - 1, "reset": reset},
        "token_header": {"limit": 10**11, "remaining": 10**11 - 1, "reset": reset},
    }
    limiter.leases._leases[SUBJECTS] = lease  # granted as meter_lease would, without the round trip
    recorder = Recorder(ledger, prices, metrics)
    callers = {
        "free": Caller("key_bench_free_000001", "ten_bench_free_000001", None),
        "limited": Caller(SUBJECTS[1], SUBJECTS[0], None, SUBJECTS, True),
    }
    shape = RequestShape(body_bytes=120)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in callers}
    clock = time.perf_counter
    for number in range(rounds):
        for name, caller in callers.items():
            exchanges = []
            for index in range(REQUESTS):
                exchange = Exchange(f"req_bench{name}{number:03d}{index:08d}", caller, "messages", True)
                exchange.model, exchange.max_tokens, exchange.shape = MODEL, 64, shape
                exchanges.append(exchange)
            spent = [0.0, 0.0, 0.0]
            gc.disable()
            for exchange in exchanges:
                begun = clock()
                await limiter.reserve(exchange)
                reserved = clock()
                recorder.started(exchange)
                started = clock()
                exchange.usage.update(USAGE)
                exchange.status, exchange.response_model, exchange.stop_reason = 200, MODEL, "end_turn"
                ended = clock()
                recorder.record(exchange)
                spent[0] += reserved - begun
                spent[1] += started - reserved
                spent[2] += clock() - ended
            gc.enable()
            await asyncio.sleep(0)  # the metrics the recorder left for after the answer
            # What the ledger writer would write: dropped, and its spool files with it.
            for _, _, claim in ledger._pending:
                if claim is not None:
                    claim.unwritten -= 1
                    spool.release(claim)
            ledger._pending.clear()
            results[name].append((spent[0] / REQUESTS * 1e6, spent[1] / REQUESTS * 1e6, spent[2] / REQUESTS * 1e6))
    return results


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory(prefix="meter-limited-work-") as tmp:
        results = asyncio.run(measure(rounds, Path(tmp)))
    medians = {name: [statistics.median(run[i] for run in runs[2:]) for i in range(3)]
               for name, runs in results.items()}  # fmt: skip
    print(f"µs per request, medians of {rounds - 2} rounds of {REQUESTS} (after 2 warm-up rounds):")
    print(f"{'':10}" + "".join(f"{stage:>14}" for stage in STAGES) + f"{'in all':>10}")
    for name, values in medians.items():
        print(f"{name:10}" + "".join(f"{value:14.2f}" for value in values) + f"{sum(values):10.2f}")
    extra = [lim - free for lim, free in zip(medians["limited"], medians["free"], strict=True)]
    print(f"{'extra':10}" + "".join(f"{value:+14.2f}" for value in extra) + f"{sum(extra):+10.2f}")


if __name__ == "__main__":
    main()
