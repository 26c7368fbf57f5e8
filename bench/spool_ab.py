"""What the ledger's spool costs on the hot path: two meters on the same database and demo upstream,
one with the spool (the default) and one without (METER_SPOOL=off), loaded in turn with hey,
alternating, so that both see the same machine at nearly the same moments.

    .venv/bin/python bench/spool_ab.py --rounds 5 --seconds 10 --connections 32

Prints a Markdown table (req/s and p50/p99 of each round, and the medians) and writes it to
bench/results/spool_ab.md. Exits 1 if a request failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import LoadResult, Target, anthropic_headers, messages_body, run_hey
from bench.processes import running_stack
from tests.support import start_meter

RESULTS = Path(__file__).resolve().parent / "results" / "spool_ab.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each variant (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per round (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="hey workers (default 32)")
    parser.add_argument("--fsync", default="off", help="METER_SPOOL_FSYNC of the spooled meter (default off)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meter-spool-ab-") as workdir, running_stack(Path(workdir)) as stack:
        spooled = stack.meter
        if args.fsync != "off":
            spooled = start_meter(
                stack.database_url, stack.upstream.base_url, Path(workdir) / "fsync", METER_SPOOL_FSYNC=args.fsync
            )
        plain = start_meter(stack.database_url, stack.upstream.base_url, Path(workdir) / "plain", METER_SPOOL="off")
        try:
            headers = anthropic_headers(stack.tenant_key)
            targets = {
                "spool on": Target("spool on", spooled.base_url + "/v1/messages", headers),
                "spool off": Target("spool off", plain.base_url + "/v1/messages", headers),
            }
            body = messages_body()
            for target in targets.values():  # warm up: connections, key cache, code paths
                run_hey(target, body, args.connections, duration_s=2)
            results: dict[str, list[LoadResult]] = {name: [] for name in targets}
            for number in range(args.rounds):
                order = list(targets) if number % 2 == 0 else list(reversed(targets))
                for name in order:
                    results[name].append(run_hey(targets[name], body, args.connections, duration_s=args.seconds))
        finally:
            plain.stop()
            if spooled is not stack.meter:
                spooled.stop()
    text = report(results, args)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    failed = sum(result.errors for runs in results.values() for result in runs)
    return 1 if failed else 0


def report(results: dict[str, list[LoadResult]], args: argparse.Namespace) -> str:
    lines = [
        f"# Spool A/B: {args.rounds} alternating rounds of {args.seconds:g} s, hey -c {args.connections}, "
        f"fsync {args.fsync}",
        "",
        "| variant | req/s per round | median req/s | median p50 ms | median p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        rates = ", ".join(f"{run.rps:,.0f}" for run in runs)
        lines.append(
            f"| {name} | {rates} | {statistics.median(run.rps for run in runs):,.0f} "
            f"| {statistics.median(run.p50_s for run in runs) * 1000:.1f} "
            f"| {statistics.median(run.p99_s for run in runs) * 1000:.1f} | {sum(run.errors for run in runs)} |"
        )
    on, off = (statistics.median(run.rps for run in results[name]) for name in ("spool on", "spool off"))
    lines += ["", f"Spool cost: {(1 - on / off) * 100:+.1f} % of req/s (median on vs median off)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
