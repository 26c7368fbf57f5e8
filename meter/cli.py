"""The `meter` command: serve the gateway, migrate the database, manage tenants and keys, and run
the demo upstream."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from meter.errors import MeterError
from meter.settings import ConfigError, Settings

T = TypeVar("T")
DEMO_UPSTREAM_KEY = "sk-ant-demo-operator-key"


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx"):  # httpx logs every request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.run(args)
    except ConfigError as exc:
        print(f"meter: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except MeterError as exc:
        print(f"meter: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meter", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--demo", action="store_true", help="start the built-in demo upstream and a demo tenant")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--upstream-url")
    serve.add_argument("--database-url")
    serve.add_argument("--data-dir", type=Path)
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="database migrations").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="migrate to the latest schema").set_defaults(run=_db_upgrade)
    db.add_parser("check", help="fail if models and migrations differ").set_defaults(run=_db_check)

    tenants = commands.add_parser("tenants", help="manage tenants").add_subparsers(required=True, metavar="ACTION")
    create = tenants.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.set_defaults(run=_tenants_create)

    keys = commands.add_parser("keys", help="manage tenant keys").add_subparsers(required=True, metavar="ACTION")
    issue = keys.add_parser("issue", help="issue a key for a tenant; the secret is printed once")
    issue.add_argument("tenant_id")
    issue.add_argument("--name")
    issue.add_argument("--expires-at", type=datetime.fromisoformat, help="ISO 8601 with time zone")
    issue.add_argument("--allowed-model", action="append", dest="allowed_models", help="repeatable")
    issue.set_defaults(run=_keys_issue)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    limits = commands.add_parser("limits", help="limits of a tenant or key").add_subparsers(
        required=True, metavar="ACTION"
    )
    set_limits = limits.add_parser("set", help="set limits; flags not given stay as they are; 'none' removes one")
    set_limits.add_argument("subject", metavar="TENANT_OR_KEY_ID")
    for flag, kind in LIMIT_FLAGS.items():
        set_limits.add_argument(f"--{flag}", type=_optional(kind), metavar="N|none", default=NOT_GIVEN)
    set_limits.set_defaults(run=_limits_set)
    show_limits = limits.add_parser("show", help="limits and usage today and this month")
    show_limits.add_argument("subject", metavar="TENANT_OR_KEY_ID")
    show_limits.set_defaults(run=_limits_show)

    credits = commands.add_parser("credits", help="prepaid credit").add_subparsers(required=True, metavar="ACTION")
    add = credits.add_parser("add", help="top up a tenant's credit (negative to take back)")
    add.add_argument("tenant_id")
    add.add_argument("amount_usd", type=Decimal)
    add.add_argument("--note")
    add.set_defaults(run=_credits_add)
    balance = credits.add_parser("balance", help="a tenant's balance")
    balance.add_argument("tenant_id")
    balance.set_defaults(run=_credits_balance)

    demo = commands.add_parser("demo-upstream", help="run the Anthropic-compatible demo upstream")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8081)
    demo.add_argument("--api-key", help="require this x-api-key")
    demo.add_argument("--latency-ms", type=float, default=0.0)
    demo.add_argument("--tokens-per-second", type=float, default=0.0)
    demo.add_argument("--output-tokens", type=int, default=12)
    demo.set_defaults(run=_demo_upstream)
    return parser


# `meter limits set` flags -> (LimitsSpec field, value type)
LIMIT_FLAGS: dict[str, type] = {
    "requests-per-minute": int,
    "tokens-per-minute": int,
    "max-concurrent-requests": int,
    "tokens-per-day": int,
    "tokens-per-month": int,
    "budget-usd-day": Decimal,
    "budget-usd-month": Decimal,
}
LIMIT_FIELDS = {
    "requests-per-minute": "requests_per_minute",
    "tokens-per-minute": "tokens_per_minute",
    "max-concurrent-requests": "max_concurrent_requests",
    "tokens-per-day": "tokens_per_day",
    "tokens-per-month": "tokens_per_month",
    "budget-usd-day": "budget_usd_per_day",
    "budget-usd-month": "budget_usd_per_month",
}
# Tells a flag left out (keep the limit) from `--flag none` (remove it).
NOT_GIVEN = object()


def _optional(kind: type) -> Callable[[str], object]:
    def parse(text: str) -> object:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        upstream_url=getattr(args, "upstream_url", None),
        database_url=getattr(args, "database_url", None),
        data_dir=getattr(args, "data_dir", None),
    )


def database_url(settings: Settings) -> str:
    """The configured server, else the embedded one (started on first use)."""
    if settings.database_url:
        return settings.database_url
    from meter import embedded_pg

    return embedded_pg.start(settings.data_dir)


def _with_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from meter.db.engine import create_engine

    async def run() -> T:
        engine = create_engine(database_url(settings), pool_size=1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _print_json(value: object) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2))


def _db_upgrade(args: argparse.Namespace) -> None:
    from meter.db import migrate

    migrate.upgrade(database_url(_settings(args)))


def _db_check(args: argparse.Namespace) -> None:
    from meter.db import migrate

    migrate.check(database_url(_settings(args)))


def _tenants_create(args: argparse.Namespace) -> None:
    from meter.admin.tenants import create_tenant

    async def work(engine: Any) -> object:
        async with engine.begin() as conn:
            return await create_tenant(conn, args.name)

    _print_json(_with_engine(_settings(args), work))


def _keys_issue(args: argparse.Namespace) -> None:
    from meter.admin.keys import KeyCreate, issue_key

    spec = KeyCreate(name=args.name, expires_at=args.expires_at, allowed_models=args.allowed_models)

    async def work(engine: Any) -> object:
        async with engine.begin() as conn:
            return await issue_key(conn, args.tenant_id, spec)

    _print_json(_with_engine(_settings(args), work))
    print("Store the key now: meter keeps only its hash and cannot show it again.", file=sys.stderr)


def _keys_revoke(args: argparse.Namespace) -> None:
    from meter.admin.keys import revoke_key

    async def work(engine: Any) -> object:
        async with engine.begin() as conn:
            key, _ = await revoke_key(conn, args.key_id)
            return key

    _print_json(_with_engine(_settings(args), work))


def _limits_set(args: argparse.Namespace) -> None:
    from meter.admin.limits import LimitsSpec, read_limits, set_limits

    async def work(engine: Any) -> object:
        async with engine.begin() as conn:
            current = await read_limits(conn, args.subject)
            values = {field: getattr(current, field) for field in LIMIT_FIELDS.values()}
            for flag, field in LIMIT_FIELDS.items():
                given = getattr(args, flag.replace("-", "_"))
                if given is not NOT_GIVEN:
                    values[field] = given
            spec = msgspec.convert(values, LimitsSpec, strict=False)
            return await set_limits(conn, args.subject, spec)

    _print_json(_with_engine(_settings(args), work))


def _limits_show(args: argparse.Namespace) -> None:
    from meter.admin.limits import read_limits

    async def work(engine: Any) -> object:
        async with engine.connect() as conn:
            return await read_limits(conn, args.subject)

    _print_json(_with_engine(_settings(args), work))


def _credits_add(args: argparse.Namespace) -> None:
    from meter.admin.credit import TopUp, add_credit

    async def work(engine: Any) -> object:
        async with engine.begin() as conn:
            return await add_credit(conn, args.tenant_id, TopUp(amount_usd=args.amount_usd, note=args.note))

    _print_json(_with_engine(_settings(args), work))


def _credits_balance(args: argparse.Namespace) -> None:
    from meter.admin.credit import read_balance

    async def work(engine: Any) -> object:
        async with engine.connect() as conn:
            return await read_balance(conn, args.tenant_id)

    _print_json(_with_engine(_settings(args), work))


def _demo_upstream(args: argparse.Namespace) -> None:
    from meter.upstream_demo import DemoConfig, run_demo_upstream

    config = DemoConfig(
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        tokens_per_second=args.tokens_per_second,
        output_tokens=args.output_tokens,
    )
    run_demo_upstream(args.host, args.port, config)


def _serve(args: argparse.Namespace) -> None:
    settings = _settings(args)
    demo: subprocess.Popen[bytes] | None = None
    if args.demo and not os.environ.get("METER_UPSTREAM_URL") and not args.upstream_url:
        demo, upstream_url = _start_demo_upstream()
        settings = Settings.from_env(
            **{**_overrides(args), "upstream_url": upstream_url, "upstream_api_key": DEMO_UPSTREAM_KEY}
        )
    if not settings.upstream_api_key:
        raise ConfigError("METER_UPSTREAM_API_KEY is required (or run `meter serve --demo`)")
    try:
        _run_gateway(settings, demo_mode=args.demo)
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "upstream_url": args.upstream_url,
        "database_url": args.database_url,
        "data_dir": args.data_dir,
    }


def _run_gateway(settings: Settings, demo_mode: bool) -> None:
    import uvicorn

    from meter.app import create_app
    from meter.db import migrate

    url = database_url(settings)
    migrate.upgrade(url)
    token_was_new = not settings.admin_token and not (settings.data_dir / "admin_token").exists()
    settings = Settings.from_env(**{**settings.__dict__, "database_url": url}).with_admin_token()
    base = f"http://{settings.host}:{settings.port}"
    if token_was_new:
        print(f"Admin token (stored in {settings.data_dir / 'admin_token'}; shown once):\n  {settings.admin_token}\n")
    if demo_mode:
        _print_demo_instructions(base, _demo_key(settings), settings.data_dir)
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; exit normally then, so that
    # atexit handlers run (they stop the embedded Postgres).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        # The upstream's own Date and Server headers are relayed instead.
        server_header=False,
        date_header=False,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


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
    from meter.admin.keys import KeyCreate, issue_key
    from meter.admin.tenants import create_tenant

    async def work(engine: Any) -> str:
        async with engine.begin() as conn:
            tenant = await create_tenant(conn, "demo")
            return (await issue_key(conn, tenant.id, KeyCreate(name="demo"))).key

    secret = _with_engine(settings, work)
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
