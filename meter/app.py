"""create_app(settings) -> the ASGI app: builds the parts, wires the routes and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar import Litestar, MediaType, Request, Response, Router, asgi, get, head
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import ASGIRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.types import Receive, Scope, Send
from prometheus_client import CollectorRegistry, make_asgi_app, multiprocess
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.audit import AuditController, token_actor
from meter.admin.auth import admin_guard
from meter.admin.credit import CreditController
from meter.admin.keys import KeyController
from meter.admin.limits import LimitsController
from meter.admin.prices import PriceController
from meter.admin.statements import StatementController
from meter.admin.tenants import TenantController
from meter.admin.usage import UsageController
from meter.credentials import new_id
from meter.db import migrate
from meter.db.engine import create_engine, create_hot_engine
from meter.db.queries import load_prices, tenant_budgets
from meter.errors import InternalError, InvalidRequest, MeterError, MethodNotAllowed, NotFound, RequestTooLarge
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.pricing import PriceTable
from meter.proxy.auth import KeyCache
from meter.proxy.forward import Upstream
from meter.proxy.gateway import Gateway
from meter.proxy.limits import Limiter
from meter.proxy.recorder import Recorder
from meter.proxy.routes import ProxyRoutes
from meter.settings import Settings

log = logging.getLogger("meter")
# Set (by `meter serve --workers N`) when worker processes share their metrics through files.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Price changes reach every process within this time (the table is small).
PRICE_REFRESH_S = 1.0
BUDGET_REPORT_S = 5.0


@dataclass
class Parts:
    """Everything a running meter holds; built once per app."""

    settings: Settings
    engine: AsyncEngine
    hot_engine: AsyncEngine
    metrics: Metrics
    prices: PriceTable
    keys: KeyCache
    upstream: Upstream
    ledger: LedgerWriter
    gateway: Gateway


def build_parts(settings: Settings, registry: CollectorRegistry | None = None) -> Parts:
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (the CLI starts embedded Postgres)")
    engine = create_engine(settings.database_url)
    hot_engine = create_hot_engine(settings.database_url)
    metrics = Metrics(registry or CollectorRegistry(), settings.metrics_max_tenants)
    prices = PriceTable()
    keys = KeyCache(hot_engine, metrics, settings.key_cache_ttl_s)
    upstream = Upstream(
        settings.upstream_url,
        settings.upstream_api_key,
        settings.upstream_max_connections,
        settings.upstream_connect_timeout_s,
        settings.upstream_read_timeout_s,
    )
    ledger = LedgerWriter(
        engine, metrics, settings.ledger_batch_rows, settings.ledger_flush_interval_s, settings.ledger_max_pending
    )
    limiter = Limiter(engine, hot_engine, prices, metrics, settings.hold_ttl_s)
    gateway = Gateway(
        keys,
        limiter,
        upstream,
        Recorder(ledger, prices, metrics),
        metrics,
        settings.max_body_bytes,
        settings.disconnect_drain_s,
    )
    return Parts(settings, engine, hot_engine, metrics, prices, keys, upstream, ledger, gateway)


def create_app_from_env() -> ProxyRoutes:
    """The app of one worker process of `meter serve --workers N`: settings come from the environment."""
    return create_app(Settings.from_env())


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> ProxyRoutes:
    """The ASGI app: Anthropic's paths go straight to the gateway, the rest to Litestar."""
    parts = build_parts(settings, registry)
    expected_heads = migrate.current_heads(settings.database_url or "")

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await _reload_prices(parts)
        parts.ledger.start()
        # What start-up allocated lives as long as the process: keep it out of every GC pass.
        gc.freeze()
        background = [
            asyncio.create_task(_refresh_prices(parts)),
            asyncio.create_task(parts.gateway.limiter.housekeeping()),
            asyncio.create_task(parts.keys.listen(settings.database_url or "")),
            asyncio.create_task(_report_budgets(parts)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await parts.ledger.close(settings.shutdown_grace_s)
            await parts.upstream.aclose()
            await parts.engine.dispose()
            await parts.hot_engine.dispose()
            if MULTIPROCESS_DIR in os.environ:
                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    @get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", include_in_schema=False)
    async def readyz() -> Response[dict[str, str]]:
        try:
            async with parts.engine.connect() as conn:
                heads = set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
        except Exception as exc:  # any failure means not ready; say which
            return Response({"status": "database unreachable", "error": exc.__class__.__name__}, status_code=503)
        if heads != expected_heads:
            return Response({"status": "migrations not at head"}, status_code=503)
        return Response({"status": "ready"})

    @head("/", include_in_schema=False)
    async def probe() -> None:
        """Claude Code's connectivity probe."""

    actor = token_actor(settings.admin_token or "")
    admin = Router(
        path="/admin",
        route_handlers=[
            TenantController,
            KeyController,
            LimitsController,
            CreditController,
            PriceController,
            UsageController,
            StatementController,
            AuditController,
        ],
        guards=[admin_guard(settings.admin_token or "")],  # type: ignore[list-item]
        dependencies={
            "db": Provide(lambda: parts.engine, sync_to_thread=False),
            "keys": Provide(lambda: parts.keys, sync_to_thread=False),
            "price_table": Provide(lambda: parts.prices, sync_to_thread=False),
            "actor": Provide(lambda: actor, sync_to_thread=False),
        },
    )
    service_routes = [healthz, readyz, probe, _metrics_route(parts.metrics.registry)]
    app = Litestar(
        route_handlers=[admin, *service_routes],
        lifespan=[lifespan],
        exception_handlers={Exception: _render_error},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="meter", version="0.1.0", path="/schema"),
    )
    return ProxyRoutes(app, parts.gateway)


def _metrics_route(registry: CollectorRegistry) -> ASGIRouteHandler:
    if MULTIPROCESS_DIR in os.environ:
        # Several worker processes: every scrape reports the sum of their values.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    exposition = make_asgi_app(registry)

    # Annotated wrapper: Litestar inspects handler signatures, and prometheus' app has none.
    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        await exposition(scope, receive, send)

    return asgi("/metrics", copy_scope=True, include_in_schema=False)(metrics)


def _render_error(request: Request, exc: Exception) -> Response[bytes]:  # type: ignore[type-arg]
    """Every error outside the proxy path (admin, unknown paths) in Anthropic's error format."""
    error = _as_meter_error(exc)
    request_id = new_id("req")
    headers = {k.decode(): v.decode() for k, v in error.response_headers(request_id)}
    return Response(error.body(request_id), status_code=error.status, headers=headers, media_type=MediaType.JSON)


def _as_meter_error(exc: Exception) -> MeterError:
    if isinstance(exc, MeterError):
        return exc
    if _is_data_error(exc):
        # Postgres refused a value (a NUL character in a path, a number too large): the request's fault.
        return InvalidRequest("A value in the request cannot be stored: a character or a number is out of range.")
    if isinstance(exc, ValidationException):
        detail = "; ".join(
            f"{e.get('key', 'body')}: {e.get('message')}" for e in (exc.extra or []) if isinstance(e, dict)
        )
        return InvalidRequest(detail or exc.detail)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return NotFound("Not found: no such endpoint.")
        if exc.status_code == 405:
            return MethodNotAllowed(exc.detail, {"allow": (exc.headers or {}).get("allow", "")})
        if exc.status_code == 413:
            return RequestTooLarge(exc.detail)
        if exc.status_code < 500:
            return InvalidRequest(exc.detail)
    log.error("unexpected error", exc_info=exc)
    return InternalError("Internal error in meter.")


def _is_data_error(exc: Exception) -> bool:
    """Postgres's class 22 (data exception), however the driver wrapped it."""
    if isinstance(exc, UnicodeEncodeError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    causes = (exc.orig, getattr(exc.orig, "__cause__", None))
    return any(str(getattr(cause, "sqlstate", "")).startswith("22") for cause in causes)


async def _report_budgets(parts: Parts) -> None:
    """Keep the budget gauges current, for the billing dashboard and the over-budget alert."""
    metrics = parts.metrics
    while True:
        try:
            async with parts.engine.connect() as conn:
                for row in await tenant_budgets(conn):
                    tenant = metrics.tenant_label(row["tenant_id"])
                    for period in ("day", "month"):
                        budget = row[f"budget_usd_per_{period}"]
                        if budget is not None:
                            used = row[f"{period}_usd"]
                            metrics.budget_used.labels(tenant, period).set(float(used / budget) if budget else 1.0)
                    if row["credit_balance_usd"] is not None:
                        metrics.credit_balance.labels(tenant).set(float(row["credit_balance_usd"]))
        except Exception:  # the gauges just go stale until the next try
            log.warning("budget gauges refresh failed", exc_info=True)
        await asyncio.sleep(BUDGET_REPORT_S)


async def _reload_prices(parts: Parts) -> None:
    async with parts.engine.connect() as conn:
        parts.prices.replace(await load_prices(conn))


async def _refresh_prices(parts: Parts) -> None:
    while True:
        await asyncio.sleep(PRICE_REFRESH_S)
        try:
            await _reload_prices(parts)
        except Exception:  # keep the last good table; the next refresh retries
            log.warning("price table refresh failed", exc_info=True)
