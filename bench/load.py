"""Closed-loop load with wrk and hey: what each is run with, and their results as numbers.

wrk reports through a Lua `done()` hook that prints its own percentiles (microseconds) as one JSON
line, so nothing depends on the layout of its human-readable summary. hey (used for a fixed count
of requests, or a fixed rate per worker) has no such hook: its summary is parsed for the few figures
used (percentiles, status codes, socket errors).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODEL = "claude-sonnet-4-6"
_WRK_MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class Target:
    """One endpoint under test: who it is ("direct", "meter", "litellm"), its URL and its headers."""

    name: str
    url: str
    headers: dict[str, str]


def messages_body(stream: bool = False, max_tokens: int = 256) -> bytes:
    """A Messages API request; the demo upstream answers it with 12 output tokens by default."""
    body: dict[str, object] = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Hello, meter"}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def anthropic_headers(api_key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    return {**headers, **(extra or {})}


@dataclass(frozen=True)
class LoadResult:
    """A closed-loop run: throughput, latency percentiles (seconds) and everything that failed."""

    requests: int
    duration_s: float
    p50_s: float
    p99_s: float
    non_2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else math.nan

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"status":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def wrk_script(target: Target, body: bytes) -> str:
    """The Lua script for one target: POST `body` with its headers, report as one JSON line."""
    headers = "\n".join(f"wrk.headers[ [==[{name}]==] ] = [==[{value}]==]" for name, value in target.headers.items())
    return _LUA.format(body=body.decode(), headers=headers, marker=_WRK_MARKER)


def run_wrk(target: Target, body: bytes, connections: int, duration_s: float, timeout_s: float = 10) -> LoadResult:
    """wrk with one thread (meter, the upstream and Postgres share the other core), `--latency`."""
    with tempfile.TemporaryDirectory(prefix="meter-bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(wrk_script(target, body))
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s:g}s",
            "--latency", "-s", str(script), target.url,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> LoadResult:
    for line in output.splitlines():
        if line.startswith(_WRK_MARKER):
            raw = json.loads(line[len(_WRK_MARKER) :])
            return LoadResult(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                p50_s=raw["p50_us"] / 1e6,
                p99_s=raw["p99_us"] / 1e6,
                # wrk counts a non-2xx/3xx response as a "status" error.
                non_2xx=raw["status"],
                socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
            )
    raise RuntimeError(f"wrk printed no result line:\n{output}")


def run_hey(
    target: Target,
    body: bytes,
    workers: int,
    *,
    rate_per_worker: float | None = None,
    duration_s: float | None = None,
    requests: int | None = None,
    max_s: float = 600,
) -> LoadResult:
    """hey, for a fixed number of requests (`-n`) or a duration (`-z`), optionally rate limited
    per worker (`-q`); gives up after `max_s`."""
    command = ["hey", "-c", str(workers), "-m", "POST", "-d", body.decode(), "-t", "30"]
    for name, value in target.headers.items():
        if name.lower() == "content-type":
            command += ["-T", value]
        else:
            command += ["-H", f"{name}: {value}"]
    if rate_per_worker is not None:
        command += ["-q", f"{rate_per_worker:g}"]
    if duration_s is not None:
        command += ["-z", f"{duration_s:g}s"]
    elif requests is not None:
        command += ["-n", str(requests)]
    command.append(target.url)
    done = subprocess.run(command, capture_output=True, text=True, timeout=max_s)
    if done.returncode != 0:
        raise RuntimeError(f"hey exited with {done.returncode}: {done.stderr.strip()}")
    return parse_hey(done.stdout)


def parse_hey(output: str) -> LoadResult:
    """hey's summary: total time, latency percentiles (seconds, 0.1 ms resolution), the count of
    each status code and of each socket error."""
    total = re.search(r"^\s*Total:\s+([\d.]+) secs", output, re.MULTILINE)
    p50 = re.search(r"^\s*50%+ in ([\d.]+) secs", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%+ in ([\d.]+) secs", output, re.MULTILINE)
    if total is None:
        raise RuntimeError(f"hey printed no summary:\n{output}")
    statuses = {int(code): int(count) for code, count in re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", output, re.M)}
    errors_part = output.partition("Error distribution:")[2]
    socket_errors = sum(int(count) for count in re.findall(r"^\s*\[(\d+)\]\s", errors_part, re.MULTILINE))
    ok = sum(count for code, count in statuses.items() if 200 <= code < 300)
    return LoadResult(
        requests=sum(statuses.values()),
        duration_s=float(total.group(1)),
        p50_s=float(p50.group(1)) if p50 else math.nan,
        p99_s=float(p99.group(1)) if p99 else math.nan,
        non_2xx=sum(statuses.values()) - ok,
        socket_errors=socket_errors,
    )
