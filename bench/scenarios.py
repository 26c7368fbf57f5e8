"""The six scenarios, each run against a running Stack and returned as one report Section.

Every comparison runs direct-to-upstream and through-meter back to back with the same client, so
what differs between the two is meter: auth (a cached key lookup), the forward over a pooled
upstream connection, the usage tee, a ledger row and the Prometheus metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from bench import ledger_bench, litellm
from bench.cpu import Window
from bench.load import LoadResult, Target, anthropic_headers, messages_body, run_hey, run_wrk
from bench.openloop import OpenLoopResult, open_loop
from bench.processes import LEDGER_DATABASE, Stack, drop_database, memory_kib
from bench.report import NONE, Check, Section, added_ms, ms, rate
from bench.stats import no_gc_pauses, run_async
from bench.streams import concurrent_streams
from meter.upstream_demo.wire import WORDS_PER_DELTA


@dataclass(frozen=True)
class Plan:
    """How long and how hard each scenario runs: the full benchmark, or the quick smoke run."""

    name: str
    wrk_s: float
    concurrencies: tuple[int, ...]
    rates: tuple[int, ...]
    open_loop_s: float
    streams: int
    stream_tokens: int
    ledger_rows: int
    rss_requests: int
    rss_every: int
    litellm_concurrencies: tuple[int, ...]
    # How often a comparison disturbed by other processes on the machine is measured again.
    retries: int


FULL = Plan("full", 8, (1, 16, 64, 256), (200, 500), 10, 500, 50, 100_000, 100_000, 10_000, (20, 64), 2)
QUICK = Plan("quick", 1, (1, 64), (200,), 2, 100, 15, 10_000, 10_000, 2_000, (), 0)

# The demo upstream paces streams at this many tokens per second (x-demo-tokens-per-second).
STREAM_TOKENS_PER_S = 10
STEADY_LEDGER_RATE = 5_000.0
# Below this share of the CPU taken by other processes, a measurement counts as undisturbed.
QUIET_SHARE = 0.05
T = TypeVar("T")


OTHER_CPU_NOTE = (
    "*other CPU*: the share of the machine's CPU that processes other than the benchmark's took during "
    "that row's runs (a row above 5% was measured again, up to twice, keeping the least disturbed attempt)."
)


def share(cpu: Window) -> str:
    return f"{cpu.other_share:.0%}"


def compare(
    stack: Stack, plan: Plan, measure: Callable[[Target], T], first: Target, second: Target
) -> tuple[T, T, Window]:
    """`measure` each target, back to back. While other processes took more than QUIET_SHARE of the
    CPU meanwhile, measure both again (up to plan.retries times) and keep the least disturbed pair.

    Attempts are chosen by how busy the machine was, never by their results.
    """
    best: tuple[T, T, Window] | None = None
    for _ in range(1 + plan.retries):
        with stack.cpu.window() as cpu:
            a, b = measure(first), measure(second)
        if best is None or cpu.other_share < best[2].other_share:
            best = a, b, cpu
        if cpu.other_share <= QUIET_SHARE:
            break
    assert best is not None
    return best


def targets(stack: Stack, extra: dict[str, str] | None = None) -> tuple[Target, Target]:
    """The same request, straight to the upstream with the operator key and through meter with
    the tenant key."""
    return (
        Target("direct", stack.upstream.base_url + "/v1/messages", anthropic_headers(stack.operator_key, extra)),
        Target("meter", stack.meter.base_url + "/v1/messages", anthropic_headers(stack.tenant_key, extra)),
    )


def _load_errors(label: str, target: Target, result: LoadResult) -> list[str]:
    if not result.errors:
        return []
    return [f"{label} {target.name}: {result.non_2xx} non-2xx responses, {result.socket_errors} socket errors"]


def warm_up(stack: Stack) -> list[str]:
    """A short run of each kind before measuring, so that connection pools, the key cache and
    lazily built state are in place."""
    errors = []
    for stream in (False, True):
        for target in targets(stack):
            errors += _load_errors("warm-up", target, run_wrk(target, messages_body(stream), 16, 2))
    return errors


def closed_loop(stack: Stack, plan: Plan) -> Section:
    section = Section(
        "1. Closed loop: throughput and latency (wrk)",
        f"`wrk -t1 -cN -d{plan.wrk_s:g}s --latency`, each connection sending its next request as soon "
        "as the previous one is answered. Latency in ms; *added* = meter minus direct.",
        ["body", "connections", "direct req/s", "meter req/s", "meter/direct", "direct p50", "meter p50",
         "added p50", "direct p99", "meter p99", "added p99", "errors", "other CPU"],
    )  # fmt: skip
    direct, meter = targets(stack)
    for stream in (False, True):
        body = messages_body(stream)
        for connections in plan.concurrencies:
            wrk = partial(run_wrk, body=body, connections=connections, duration_s=plan.wrk_s)
            d, m, cpu = compare(stack, plan, wrk, direct, meter)
            label = f"{'SSE' if stream else 'JSON'} c={connections}"
            section.errors += _load_errors(label, direct, d) + _load_errors(label, meter, m)
            section.rows.append([
                "SSE" if stream else "JSON", str(connections), rate(d.rps), rate(m.rps), f"{m.rps / d.rps:.2f}",
                ms(d.p50_s), ms(m.p50_s), added_ms(m.p50_s, d.p50_s),
                ms(d.p99_s), ms(m.p99_s), added_ms(m.p99_s, d.p99_s), str(d.errors + m.errors), share(cpu),
            ])  # fmt: skip
    section.notes.append(OTHER_CPU_NOTE)
    return section


def open_loop_rates(stack: Stack, plan: Plan) -> Section:
    section = Section(
        "2. Open loop: latency at a constant rate",
        f"bench/openloop.py (aiohttp, uvloop): requests start on an even schedule, {plan.open_loop_s:g} s per "
        "run after a 1 s warm-up, whatever the latency. Latency = to the last body byte; TTFB = to the "
        "first body chunk (SSE). ms; *added* = meter minus direct. The last row is the earlier reference "
        "method, hey's closed loop: one worker rate-limited to 200 req/s (0.1 ms resolution).",
        ["body", "rate/s", "sent (meter)", "direct p50", "meter p50", "added p50", "direct p99", "meter p99",
         "added p99", "added TTFB p50", "added TTFB p99", "failures", "client late", "other CPU"],
    )  # fmt: skip
    direct, meter = targets(stack)
    runs: dict[tuple[bool, int], tuple[OpenLoopResult, OpenLoopResult]] = {}
    for stream in (False, True):
        body = messages_body(stream)
        for per_s in plan.rates:
            constant_rate = partial(_open_loop, body=body, rate=per_s, duration_s=plan.open_loop_s, stream=stream)
            d, m, cpu = compare(stack, plan, constant_rate, direct, meter)
            runs[stream, per_s] = d, m
            for target, result in ((direct, d), (meter, m)):
                if result.failures:
                    section.errors.append(f"{per_s}/s {target.name}: {result.failures} failed ({result.first_failure})")
            ttfb = (
                [added_ms(m.ttfb_p(50), d.ttfb_p(50)), added_ms(m.ttfb_p(99), d.ttfb_p(99))] if stream else [NONE] * 2
            )
            section.rows.append([
                "SSE" if stream else "JSON", str(per_s), str(m.sent), ms(d.p(50)), ms(m.p(50)),
                added_ms(m.p(50), d.p(50)), ms(d.p(99)), ms(m.p(99)), added_ms(m.p(99), d.p(99)), *ttfb,
                str(d.failures + m.failures), ms(max(d.max_lateness_s, m.max_lateness_s)), share(cpu),
            ])  # fmt: skip
    hey = partial(run_hey, body=messages_body(), workers=1, rate_per_worker=200, duration_s=plan.open_loop_s)
    hey_d, hey_m, cpu = compare(stack, plan, hey, direct, meter)
    section.errors += _load_errors("hey -c1 -q200", direct, hey_d) + _load_errors("hey -c1 -q200", meter, hey_m)
    section.rows.append([
        "JSON, hey -c1 -q200", "200", str(hey_m.requests), ms(hey_d.p50_s), ms(hey_m.p50_s),
        added_ms(hey_m.p50_s, hey_d.p50_s), ms(hey_d.p99_s), ms(hey_m.p99_s), added_ms(hey_m.p99_s, hey_d.p99_s),
        NONE, NONE, str(hey_d.errors + hey_m.errors), NONE, share(cpu),
    ])  # fmt: skip
    section.notes.append(OTHER_CPU_NOTE)
    section.notes.append(
        "*client late*: how late (ms) the generator started its most delayed request; a large value means "
        "the client, not the server, lost time, and requests went out in a burst afterwards."
    )
    if (False, 200) in runs:
        d, m = runs[False, 200]
        section.checks.append(_at_most("added latency p50 at 200 req/s (JSON)", m.p(50) - d.p(50), 0.001))
        section.checks.append(_at_most("added latency p99 at 200 req/s (JSON)", m.p(99) - d.p(99), 0.005))
    if (True, 200) in runs:
        d, m = runs[True, 200]
        section.checks.append(_at_most("added TTFB p99 at 200 req/s (SSE)", m.ttfb_p(99) - d.ttfb_p(99), 0.003))
    return section


def limits_cost(stack: Stack, plan: Plan) -> Section:
    """The same requests through meter for a tenant without limits and for one with every kind of
    limit (rate, tokens, concurrency, daily tokens, monthly budget): the price of enforcing them."""
    section = Section(
        "7. The cost of limit checks",
        "Through meter only: a tenant without limits (*off*) and a tenant with every kind of limit set "
        "high enough never to refuse (*on*: each request reserves with one round trip to Postgres, and "
        "settles in the ledger's batched statement). Open loop at 200 req/s (JSON), then wrk at 16 "
        "connections. ms; *added* = on minus off.",
        ["load", "off p50", "on p50", "added p50", "off p99", "on p99", "added p99", "off req/s", "on req/s",
         "failures", "other CPU"],
    )  # fmt: skip
    off = Target("limits off", stack.meter.base_url + "/v1/messages", anthropic_headers(stack.tenant_key))
    on = Target("limits on", stack.meter.base_url + "/v1/messages", anthropic_headers(stack.limited_key))
    body = messages_body()
    constant_rate = partial(_open_loop, body=body, rate=200, duration_s=plan.open_loop_s, stream=False)
    a, b, cpu = compare(stack, plan, constant_rate, off, on)
    section.rows.append([
        "open loop 200 req/s", ms(a.p(50)), ms(b.p(50)), added_ms(b.p(50), a.p(50)), ms(a.p(99)), ms(b.p(99)),
        added_ms(b.p(99), a.p(99)), "-", "-", str(a.failures + b.failures), share(cpu),
    ])  # fmt: skip
    if a.failures or b.failures:
        section.errors.append(f"open loop: {a.failures + b.failures} failed ({a.first_failure or b.first_failure})")
    wrk = partial(run_wrk, body=body, connections=16, duration_s=plan.wrk_s)
    c, d, cpu = compare(stack, plan, wrk, off, on)
    section.errors += _load_errors("wrk c=16", off, c) + _load_errors("wrk c=16", on, d)
    section.rows.append([
        "wrk c=16", ms(c.p50_s), ms(d.p50_s), added_ms(d.p50_s, c.p50_s), ms(c.p99_s), ms(d.p99_s),
        added_ms(d.p99_s, c.p99_s), rate(c.rps), rate(d.rps), str(c.errors + d.errors), share(cpu),
    ])  # fmt: skip
    section.notes.append(OTHER_CPU_NOTE)
    return section


def _at_most(what: str, measured_s: float, limit_s: float) -> Check:
    return Check(f"{what} ≤ {limit_s * 1000:g} ms", f"{measured_s * 1000:+.2f} ms", measured_s <= limit_s)


def _open_loop(target: Target, body: bytes, rate: float, duration_s: float, stream: bool) -> OpenLoopResult:
    with no_gc_pauses():
        return run_async(open_loop(target.url, target.headers, body, rate, duration_s, stream=stream))


def many_streams(stack: Stack, plan: Plan) -> Section:
    interval_s = WORDS_PER_DELTA / STREAM_TOKENS_PER_S
    stall_s = interval_s + 1.0
    section = Section(
        "3. Concurrent streams",
        f"{plan.streams} SSE streams opened at once, the upstream pacing {plan.stream_tokens} output tokens at "
        f"{STREAM_TOKENS_PER_S} tokens/s ({WORDS_PER_DELTA} per event: one event every {interval_s:.1f} s, "
        f"~{plan.stream_tokens / STREAM_TOKENS_PER_S:.0f} s per stream). *Completed* = ended with message_stop; "
        f"a *stall* is a gap between chunks longer than {stall_s:.1f} s (1 s beyond the pacing interval).",
        ["target", "streams", "completed", "failed", "TTFB p50 ms", "TTFB p99 ms", "largest gap s", "stalls",
         "wall time s"],
    )  # fmt: skip
    pacing = {"x-demo-output-tokens": str(plan.stream_tokens), "x-demo-tokens-per-second": str(STREAM_TOKENS_PER_S)}
    body = messages_body(stream=True)
    for target in targets(stack, pacing):
        with no_gc_pauses():
            result = run_async(concurrent_streams(target.url, target.headers, body, plan.streams))
        failed = len(result.failures)
        section.rows.append([
            target.name, str(plan.streams), str(result.completed), str(failed), ms(result.ttfb_p(50)),
            ms(result.ttfb_p(99)), f"{result.max_gap_s:.2f}", str(result.stalls(stall_s)), f"{result.wall_s:.1f}",
        ])  # fmt: skip
        if failed:
            section.errors.append(f"{target.name}: {failed} streams failed, e.g. {result.failures[0]}")
        if target.name == "meter":
            ok = result.completed == plan.streams and result.stalls(stall_s) == 0
            measured = f"{result.completed}/{plan.streams} completed, largest gap {result.max_gap_s:.2f} s"
            section.checks.append(Check(f"{plan.streams} concurrent streams, none stalled", measured, ok))
    return section


def ledger(stack: Stack, plan: Plan) -> Section:
    section = Section(
        "4. Ledger writes (in-process)",
        f"meter's LedgerWriter (default batch of 500 rows, 50 ms flush) on a real engine: {plan.ledger_rows:,} "
        f"synthetic rows queued at a steady {STEADY_LEDGER_RATE:,.0f} rows/s, then {plan.ledger_rows:,} more as "
        "fast as they can be queued. *Lag* = from record() to the commit that wrote the row.",
        ["run", "rows", "written rows/s", "max queue depth", "lag p50 ms", "lag p99 ms", "max lag ms",
         "write errors"],
    )  # fmt: skip
    try:
        runs, stored = ledger_bench.ledger_benchmark(
            stack.postgres_server_url, LEDGER_DATABASE, plan.ledger_rows, STEADY_LEDGER_RATE
        )
    finally:
        if stack.postgres_label == "external":
            drop_database(stack.postgres_server_url, LEDGER_DATABASE)
    for run in runs:
        section.rows.append([
            run.label, f"{run.rows:,}", rate(run.written_rate), f"{run.max_pending:,}", ms(run.lag_p(50)),
            ms(run.lag_p(99)), ms(run.max_lag_s), f"{run.write_errors:.0f}",
        ])  # fmt: skip
        if run.write_errors or run.dropped:
            section.errors.append(f"{run.label}: {run.write_errors:.0f} write errors, {run.dropped:.0f} rows dropped")
    expected = sum(run.rows for run in runs)
    if stored != expected:
        section.errors.append(f"{stored:,} rows in usage_events after the runs, expected {expected:,}")
    steady, unthrottled = runs
    section.checks.append(
        Check(
            "ledger ≥ 5,000 rows/s with bounded lag",
            f"{unthrottled.written_rate:,.0f} rows/s unthrottled; max lag {steady.max_lag_s * 1000:.0f} ms at "
            f"{STEADY_LEDGER_RATE:,.0f} rows/s",
            unthrottled.written_rate >= 5_000 and steady.max_lag_s <= 1.0,
        )
    )
    section.notes.append('"Bounded lag" is judged as: at 5,000 rows/s, no row waits more than 1 s to be committed.')
    return section


def memory(stack: Stack, plan: Plan) -> Section:
    section = Section(
        "5. meter's memory",
        f"VmRSS of the meter process (from /proc/PID/status) every {plan.rss_every:,} requests over "
        f"{plan.rss_requests:,} JSON requests (`hey -c 64 -n {plan.rss_every}` per step), after the scenarios "
        "before it; VmHWM is the peak resident memory since meter started.",
        ["requests", "VmRSS MiB"],
    )
    _, meter = targets(stack)
    samples = [(0, memory_kib(stack.meter_pid)[0])]
    done = 0
    while done < plan.rss_requests:
        result = run_hey(meter, messages_body(), 64, requests=plan.rss_every)
        section.errors += _load_errors(f"after {done:,} requests", meter, result)
        done += plan.rss_every
        samples.append((done, memory_kib(stack.meter_pid)[0]))
    section.rows = [[f"{count:,}", f"{kib / 1024:.1f}"] for count, kib in samples]
    first, last = samples[0][1], samples[-1][1]
    growth = (last - first) / first
    peak = memory_kib(stack.meter_pid)[1]
    section.notes.append(
        f"First {first / 1024:.1f} MiB, last {last / 1024:.1f} MiB: growth {(last - first) / 1024:+.1f} MiB "
        f"({growth:+.1%}). Peak (VmHWM) so far: {peak / 1024:.1f} MiB."
    )
    section.checks.append(
        Check(
            f"RSS flat over {plan.rss_requests:,} requests (growth ≤ 5%)",
            f"{first / 1024:.1f} → {last / 1024:.1f} MiB ({growth:+.1%}); peak {peak / 1024:.1f} MiB",
            growth <= 0.05,
        )
    )
    return section


def versus_litellm(stack: Stack, plan: Plan, workdir: Path) -> Section:
    section = Section(
        "6. meter versus LiteLLM's proxy",
        f"LiteLLM {litellm.VERSION} (`litellm[proxy]`, one process, no database, master key on, access log off) "
        f"routing `claude-sonnet-4-6` to its `anthropic` provider at the same demo upstream, in the same run. "
        f"JSON, `wrk -t1 -cN -d{plan.wrk_s:g}s`; latency in ms.",
        ["connections", "LiteLLM endpoint", "meter req/s", "LiteLLM req/s", "meter ÷ LiteLLM", "meter p50",
         "LiteLLM p50", "meter p99", "LiteLLM p99", "errors", "other CPU"],
    )  # fmt: skip
    litellm.ensure_installed()
    proxy, base_url = litellm.start(workdir, stack.upstream.base_url, stack.operator_key)
    try:
        other = litellm.working_target(base_url)
        _, meter = targets(stack)
        body = messages_body()
        run_wrk(other, body, 4, 2)  # warm-up: LiteLLM's first requests are much slower
        for connections in plan.litellm_concurrencies:
            wrk = partial(run_wrk, body=body, connections=connections, duration_s=plan.wrk_s)
            m, o, cpu = compare(stack, plan, wrk, meter, other)
            label = f"c={connections}"
            section.errors += _load_errors(label, meter, m) + _load_errors(label, other, o)
            ratio = m.rps / o.rps if o.rps else math.nan
            endpoint = other.url.removeprefix(base_url)
            section.rows.append([
                str(connections), f"`{endpoint}`", rate(m.rps), rate(o.rps), f"{ratio:.1f}x", ms(m.p50_s),
                ms(o.p50_s), ms(m.p99_s), ms(o.p99_s), str(m.errors + o.errors), share(cpu),
            ])  # fmt: skip
            section.checks.append(Check(f"≥ 10x LiteLLM's throughput (c={connections})", f"{ratio:.1f}x", ratio >= 10))
    finally:
        proxy.stop()
    return section
