"""Run meter's benchmark: start Postgres, the demo upstream and meter, run the scenarios, print the
report as Markdown and write it to bench/results/latest.md.

    .venv/bin/python bench/run.py            # full run, 7-14 minutes (docs/benchmarks.md)
    .venv/bin/python bench/run.py --quick    # smoke run under a minute, for CI: no LiteLLM

Exits 1 if any scenario failed (an error response, a broken stream, a lost ledger row), 2 if wrk or
hey is missing. Targets are reported, never enforced: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

# Run as a script: make the repository root importable, for `bench` and `tests.support`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scenarios, wire_speed
from bench.cpu import CpuAccount
from bench.processes import Stack, missing_tools, raise_open_file_limit, running_stack
from bench.report import Section, render
from bench.scenarios import FULL, QUICK, Plan
from tests.support import scrape

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
SCENARIOS = ("closed-loop", "open-loop", "streams", "ledger", "memory", "litellm", "limits", "wire-speed", "hot-tenant")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: short, small, no LiteLLM")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = [name for name in SCENARIOS if not args.only or name in args.only]
    if args.quick or args.no_litellm:
        chosen = [name for name in chosen if name != "litellm"]

    missing = missing_tools()
    if missing:
        print(
            f"bench: {' and '.join(missing)} not found on PATH. Install them first, e.g. on Debian or Ubuntu:\n"
            f"  sudo apt-get install -y {' '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    raise_open_file_limit()

    started, started_at = time.monotonic(), datetime.now(UTC)
    with CpuAccount().window() as idle:
        time.sleep(1)
    if idle.other_share > scenarios.QUIET_SHARE:
        print(
            f"bench: warning: other processes are using {idle.other_share:.0%} of the CPU; timings will be disturbed "
            "(disturbed comparisons are measured again, and the report shows each row's share)",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp:
        workdir = Path(tmp)
        print(
            f"bench: {plan.name} run of {', '.join(chosen)}; starting Postgres, the demo upstream and meter", flush=True
        )
        with running_stack(workdir) as stack:
            sections = [_warm_up(stack)]
            for name in chosen:
                print(f"bench: {name}...", flush=True)
                sections.append(_scenario(name, stack, _runner(name, stack, plan, workdir)))
            sections.append(_meter_ledger(stack))
            machine = _machine(stack, plan, started_at, idle.other_share)
    machine.append(("duration", f"{time.monotonic() - started:.0f} s"))

    scope = f"{plan.name} run" + (f" of {', '.join(chosen)} only" if args.only else "")
    report = render(f"meter benchmark ({scope})", machine, sections)
    print("\n" + report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    failed = [error for section in sections for error in section.errors]
    if failed:
        print(f"bench: {len(failed)} error(s); see the report above", file=sys.stderr)
        return 1
    return 0


def _runner(name: str, stack: Stack, plan: Plan, workdir: Path) -> Callable[[], Section]:
    runners: dict[str, Callable[[], Section]] = {
        "closed-loop": lambda: scenarios.closed_loop(stack, plan),
        "open-loop": lambda: scenarios.open_loop_rates(stack, plan),
        "streams": lambda: scenarios.many_streams(stack, plan),
        "ledger": lambda: scenarios.ledger(stack, plan),
        "memory": lambda: scenarios.memory(stack, plan),
        "litellm": lambda: scenarios.versus_litellm(stack, plan, workdir),
        "limits": lambda: scenarios.limits_cost(stack, plan),
        "wire-speed": lambda: wire_speed.wire_speed(stack, plan.wrk_s, (1, 16, 64), workdir),
        "hot-tenant": lambda: wire_speed.hot_tenant(stack, plan.wrk_s, workdir),
    }
    return runners[name]


def _scenario(name: str, stack: Stack, run: Callable[[], Section]) -> Section:
    """Run one scenario; one that raises becomes an error section, and the others still run."""
    with stack.cpu.window() as cpu:
        try:
            section = run()
        except Exception as exc:
            traceback.print_exc()
            section = Section(name, "", [], errors=[f"{name} did not complete: {exc.__class__.__name__}: {exc}"])
    section.notes.append(f"Processes other than the benchmark's used {cpu.other_share:.0%} of the CPU meanwhile.")
    return section


def _warm_up(stack: Stack) -> Section:
    section = Section(
        "Warm-up", "2 s of JSON and of SSE at 16 connections, direct and through meter; not measured.", []
    )
    try:
        section.errors += scenarios.warm_up(stack)
    except Exception as exc:
        section.errors.append(f"warm-up failed: {exc.__class__.__name__}: {exc}")
    return section


def _meter_ledger(stack: Stack) -> Section:
    """meter's own ledger over the whole run, from its /metrics: everything it served was recorded."""
    section = Section("meter's ledger during the run", "", [])
    time.sleep(0.5)  # one flush interval and more, for the last rows
    try:
        text = scrape(stack.meter.base_url)
    except httpx.HTTPError as exc:
        section.errors.append(f"could not read meter's /metrics: {exc.__class__.__name__}")
        return section

    def value(metric: str) -> float:
        found = re.search(rf"^{metric} ([0-9.e+]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else float("nan")

    written, dropped = value("meter_ledger_rows_written_total"), value("meter_ledger_rows_dropped_total")
    errors, pending = value("meter_ledger_write_errors_total"), value("meter_ledger_queue_depth")
    section.description = (
        f"From meter's /metrics at the end: {written:,.0f} ledger rows written, {dropped:.0f} dropped, "
        f"{errors:.0f} failed batch writes (retried), {pending:.0f} still queued."
    )
    if dropped or pending:
        section.errors.append(f"meter dropped {dropped:.0f} ledger rows and has {pending:.0f} unwritten")
    return section


def _machine(stack: Stack, plan: Plan, started_at: datetime, busy_before: float) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return [
        ("started", started_at.strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", cpu.group(1) if cpu else platform.processor() or "unknown"),
        ("cores", str(os.cpu_count())),
        ("memory", f"{int(memory.group(1)) / 1024**2:.0f} GiB" if memory else "unknown"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("meter commit", _commit()),
        ("Postgres", f"{stack.postgres_label} (same machine)"),
        ("tools", _first_line(["wrk", "--version"]) + "; hey"),
        ("CPU taken by other processes just before the run", f"{busy_before:.0%}"),
        ("plan", plan.name),
    ]


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not commit:
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty.returncode == 1 else "")


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return command[0]
    lines = (done.stdout or done.stderr).splitlines()
    return " ".join(lines[0].split()[:2]) if lines else command[0]


if __name__ == "__main__":
    sys.exit(main())
