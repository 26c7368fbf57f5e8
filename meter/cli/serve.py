"""`meter serve`, `meter db upgrade|check` and `meter demo-upstream`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from meter.cli import common
from meter.credentials import KeyHasher
from meter.settings import ENV_FIELDS, ConfigError, Settings

DEMO_UPSTREAM_KEY = "sk-ant-demo-operator-key"


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--demo", action="store_true", help="start the built-in demo upstream and a demo tenant")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--upstream-url")
    serve.add_argument("--database-url")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--workers", type=int, help="worker processes on one port (default 1; one per core)")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="database migrations").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="migrate to the latest schema").set_defaults(run=_db_upgrade)
    db.add_parser("check", help="fail if models and migrations differ").set_defaults(run=_db_check)

    demo = commands.add_parser("demo-upstream", help="run the Anthropic-compatible demo upstream")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8081)
    demo.add_argument("--api-key", help="require this x-api-key")
    demo.add_argument("--latency-ms", type=float, default=0.0)
    demo.add_argument("--tokens-per-second", type=float, default=0.0)
    demo.add_argument("--output-tokens", type=int, default=12)
    demo.add_argument("--admin-api-key", help="key of its Admin API (usage and cost reports)")
    demo.add_argument("--batch-seconds", type=float, help="how long a message batch runs (default 2)")
    demo.set_defaults(run=_demo_upstream)


def _db_upgrade(args: argparse.Namespace) -> None:
    from meter.db import migrate

    config = common.settings(args)
    migrate.upgrade(common.database_url(config), transaction_pooling=config.database_transaction_pooling)


def _db_check(args: argparse.Namespace) -> None:
    from meter.db import migrate

    config = common.settings(args)
    migrate.check(common.database_url(config), transaction_pooling=config.database_transaction_pooling)


def _demo_upstream(args: argparse.Namespace) -> None:
    from meter.upstream_demo import DemoConfig, run_demo_upstream

    config = DemoConfig(
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        tokens_per_second=args.tokens_per_second,
        output_tokens=args.output_tokens,
        **{name: value for name in ("admin_api_key", "batch_seconds") if (value := getattr(args, name)) is not None},
    )
    run_demo_upstream(args.host, args.port, config)


def _serve(args: argparse.Namespace) -> None:
    settings = common.settings(args)
    demo: subprocess.Popen[bytes] | None = None
    if args.demo and not os.environ.get("METER_UPSTREAM_URL") and not args.upstream_url:
        demo, upstream_url = _start_demo_upstream()
        settings = common.settings(args, upstream_url=upstream_url, upstream_api_key=DEMO_UPSTREAM_KEY)
    if not settings.upstream_api_key:
        raise ConfigError("METER_UPSTREAM_API_KEY is required (or run `meter serve --demo`)")
    try:
        _run_gateway(settings, demo_mode=args.demo)
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)


def _run_gateway(settings: Settings, demo_mode: bool) -> None:
    import uvicorn

    from meter.app import create_app
    from meter.db import migrate
    from meter.db.pooling import check_database
    from meter.metrics import serve_exposition
    from meter.server import GuardedHttpToolsProtocol

    url = common.database_url(settings)
    # Before anything else talks to the database: a pooler in the way is named, not met later.
    asyncio.run(check_database(replace(settings, database_url=url)))
    migrate.upgrade(url, transaction_pooling=settings.database_transaction_pooling)
    token_was_new = not settings.admin_token and not (settings.data_dir / "admin_token").exists()
    settings = replace(settings, database_url=url).with_admin_token().with_key_pepper()
    common.check_pepper(settings, KeyHasher(settings.key_pepper or ""))
    base = f"http://{settings.host}:{settings.port}"
    if token_was_new:
        print(f"Admin token (stored in {settings.data_dir / 'admin_token'}; shown once):\n  {settings.admin_token}\n")
    if demo_mode:
        _print_demo_instructions(base, _demo_key(settings), settings.data_dir)
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; exit normally then, so that
    # atexit handlers run (they stop the embedded Postgres).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app: Any = "meter.app:create_app_from_env"
    if settings.workers > 1:
        # Each worker builds its app from the environment, and shares its metrics through files,
        # which this process sums on the metrics address.
        os.environ.update(_worker_environment(settings))
        if settings.metrics_address:
            serve_exposition(*settings.metrics_host_port(), None)
    else:
        app = create_app(settings)
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,  # with its own connection cap (METER_MAX_CONNECTIONS)
        lifespan="on",
        access_log=False,
        # The upstream's own Date and Server headers are relayed instead.
        server_header=False,
        date_header=False,
        # meter does not use the client's address; skip the middleware that rewrites it per request.
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


def _worker_environment(settings: Settings) -> dict[str, str]:
    metrics_dir = settings.data_dir.resolve() / f"metrics-{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters must start from zero
    metrics_dir.mkdir(parents=True)
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for name, value in vars(settings).items():
        if value is not None and name in ENV_FIELDS:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            environment[f"METER_{name.upper()}"] = text
    return environment


def _start_demo_upstream() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "meter", "demo-upstream", "--port", str(port), "--api-key", DEMO_UPSTREAM_KEY]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise ConfigError("the demo upstream did not start")


def _demo_key(settings: Settings) -> str:
    """The demo tenant's key, created on the first demo start and kept in the data dir."""
    path = settings.data_dir / "demo_key"
    if path.exists():
        return path.read_text().strip()
    from meter.admin.audit import cli_actor
    from meter.admin.keys import KeyCreate, issue_key
    from meter.admin.tenants import create_tenant

    async def work(conn: AsyncConnection) -> str:
        tenant = await create_tenant(conn, "demo", cli_actor())
        hasher = KeyHasher(settings.key_pepper or "")
        return (await issue_key(conn, tenant.id, KeyCreate(name="demo"), cli_actor(), hasher)).key

    secret = common.in_transaction(settings, work)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _print_demo_instructions(base: str, key: str, data_dir: Path) -> None:
    print(
        f"""meter is running in demo mode at {base} (upstream: the built-in demo API).
Demo tenant key: {key}

  curl {base}/v1/messages \\
    -H "x-api-key: {key}" -H "anthropic-version: 2023-06-01" -H "content-type: application/json" \\
    -d '{{"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c 'import anthropic; c = anthropic.Anthropic(base_url="{base}", api_key="{key}"); \\
print(c.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{{"role": "user", "content": "Hi"}}]))'

Usage so far: curl {base}/admin/usage/events -H "Authorization: Bearer $(cat {data_dir}/admin_token)"
""",
        flush=True,
    )
