"""CPU per answered request of two or more meter builds, side by side: the same demo upstream, a
database each, `hey` against each in turn (interleaved rounds), and the meter process's utime +
stime from /proc per 200 answer; beside it, what the demo upstream and every Postgres process
spent per answer meanwhile (their sum is what decides req/s once the cores are full). Less
disturbed by other jobs on the machine than req/s.

    .venv/bin/python bench/cpu_ab.py OLD_CHECKOUT NEW_CHECKOUT[:METER_X=1,...] [connections] [seconds] [rounds]

Each checkout needs its own `.venv` with meter installed (`python3 -m venv .venv && .venv/bin/pip
install -e .`); `:ENV=value,...` after a path starts that build with extra settings. Uses the
Postgres server named by METER_BENCH_DATABASE_URL (default: the local one, trust auth).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.cpu import CpuAccount
from bench.load import messages_body
from bench.processes import LIMITS, create_tenant_key, server_url_with_database
from tests.support import (
    ADMIN_TOKEN,
    KEY_PEPPER,
    OPERATOR_KEY,
    Process,
    create_database,
    free_port,
    sql,
    start_demo_upstream,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_account(server_url: str) -> CpuAccount:
    """The CPU of the Postgres server at `server_url`: its postmaster and every process under it
    (backends, the writers, the WAL), also those that exited meanwhile."""
    directory = sql(server_url, "SELECT setting FROM pg_settings WHERE name = 'data_directory'")[0]["setting"]
    return CpuAccount(int((Path(directory) / "postmaster.pid").read_text().split()[0]))


def start_build(spec: str, index: int, upstream_url: str, server_url: str, work: Path) -> Process:
    root, _, extra = spec.partition(":")
    env = dict(pair.split("=", 1) for pair in extra.split(",") if pair)
    url = create_database(server_url, f"meter_cpu_ab_{index}")
    meter = f"{root}/.venv/bin/meter"
    subprocess.run([meter, "db", "upgrade"], env={**os.environ, "METER_DATABASE_URL": url}, check=True)
    data = work / f"m{index}"
    data.mkdir()
    port = free_port()
    settings = {
        "METER_DATABASE_URL": url,
        "METER_UPSTREAM_URL": upstream_url,
        "METER_UPSTREAM_API_KEY": OPERATOR_KEY,
        "METER_ADMIN_TOKEN": ADMIN_TOKEN,
        "METER_KEY_PEPPER": KEY_PEPPER,
        "METER_DATA_DIR": str(data),
        **env,
    }
    return Process([meter, "serve", "--port", str(port)], settings, f"http://127.0.0.1:{port}", "/readyz")


def main() -> None:
    specs = [arg for arg in sys.argv[1:] if arg.startswith(("/", "."))]
    rest = [arg for arg in sys.argv[1:] if not arg.startswith(("/", "."))]
    connections, seconds, rounds = (rest + ["16", "5", "3"][len(rest) :])[:3]
    server_url = server_url_with_database(
        os.environ.get("METER_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    body = messages_body().decode()
    with tempfile.TemporaryDirectory(prefix="meter-cpu-ab-") as tmp:
        work = Path(tmp)
        (work / "upstream").mkdir()
        upstream = start_demo_upstream(work / "upstream")
        postgres = postgres_account(server_url)
        builds: list[tuple[str, Process, dict[str, str]]] = []
        try:
            for index, spec in enumerate(specs):
                meter = start_build(spec, index, upstream.base_url, server_url, work)
                keys = {"free": create_tenant_key(meter.base_url, ADMIN_TOKEN),
                        "limited": create_tenant_key(meter.base_url, ADMIN_TOKEN, LIMITS)}  # fmt: skip
                builds.append((spec, meter, keys))
            results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
            for _ in range(int(rounds)):
                for kind in ("free", "limited"):
                    for spec, meter, keys in builds:
                        before = cpu_s(meter.process.pid)
                        peers = cpu_s(upstream.process.pid), postgres.ticks() / TICKS
                        out = subprocess.run(
                            ["hey", "-z", f"{seconds}s", "-c", connections, "-m", "POST", "-T", "application/json",
                             "-H", f"x-api-key: {keys[kind]}", "-H", "anthropic-version: 2023-06-01", "-d", body,
                             meter.base_url + "/v1/messages"],
                            capture_output=True, text=True, check=True,
                        ).stdout  # fmt: skip
                        used = cpu_s(meter.process.pid) - before
                        upstream_used = cpu_s(upstream.process.pid) - peers[0]
                        postgres_used = postgres.ticks() / TICKS - peers[1]
                        answered = re.search(r"\[200\]\s+(\d+) responses", out)
                        per_s = re.search(r"Requests/sec:\s+([0-9.]+)", out)
                        assert answered and per_s, out
                        n = int(answered.group(1))
                        results.setdefault((spec, kind), []).append(
                            (used / n * 1e6, float(per_s.group(1)), upstream_used / n * 1e6, postgres_used / n * 1e6)
                        )
            for (spec, kind), runs in results.items():
                print(f"{spec:40} {kind:8} CPU per request median {statistics.median(r[0] for r in runs):6.0f} µs "
                      f"(runs {[round(r[0]) for r in runs]}), best {max(r[1] for r in runs):,.0f} req/s; "
                      f"upstream {statistics.median(r[2] for r in runs):4.0f} µs, "
                      f"postgres {statistics.median(r[3] for r in runs):4.0f} µs")  # fmt: skip
        finally:
            for _, meter, _ in builds:
                meter.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
