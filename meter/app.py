"""create_app(settings) -> the ASGI app: builds the parts, wires the routes and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import server
from meter.admin.audit import AuditController, token_actor
from meter.admin.auth import admin_guard
from meter.admin.batches import BatchController
from meter.admin.credit import CreditController
from meter.admin.keys import KeyController
from meter.admin.limits import LimitsController
from meter.admin.prices import PriceController
from meter.admin.statements import StatementController
from meter.admin.tenants import TenantController
from meter.admin.usage import UsageController
from meter.admin.webhooks import WebhookController
from meter.batches.billing import BatchBilling
from meter.console.router import console_router
from meter.credentials import KeyHasher
from meter.db import migrate
from meter.db.engine import create_engine, create_hot_engine
from meter.db.partitions import keep_partitioned
from meter.errors import render_error
from meter.gauges import report_budgets
from meter.health import health_routes
from meter.ledger import LedgerWriter
from meter.metrics import Metrics, exposition_route, mark_process_dead, serve_exposition
from meter.pricing import PriceTable
from meter.proxy.auth import KeyCache
from meter.proxy.cors import Cors
from meter.proxy.endpoints import ENDPOINTS
from meter.proxy.forward import Upstream
from meter.proxy.gate import Gate
from meter.proxy.gateway import Gateway
from meter.proxy.handler import Services
from meter.proxy.limits import Limiter
from meter.proxy.recorder import Recorder
from meter.proxy.routes import ProxyRoutes
from meter.reconcile.job import keep_reconciled
from meter.settings import Settings
from meter.spool import Spool
from meter.webhooks import worker as webhooks
from meter.webhooks.checker import Checker
from meter.webhooks.delivery import Deliverer


@dataclass
class Parts:
    """Everything a running meter holds; built once per app."""

    settings: Settings
    engine: AsyncEngine
    hot_engine: AsyncEngine
    metrics: Metrics
    prices: PriceTable
    hasher: KeyHasher
    keys: KeyCache
    upstream: Upstream
    ledger: LedgerWriter
    billing: BatchBilling
    gateway: Gateway
    webhook_checker: Checker
    webhook_deliverer: Deliverer


def build_parts(settings: Settings, registry: CollectorRegistry | None = None) -> Parts:
    if not settings.database_url or not settings.key_pepper:
        raise ValueError("create_app needs settings.database_url and key_pepper (the CLI provides both)")
    pooled = settings.database_transaction_pooling
    engine = create_engine(settings.database_url, transaction_pooling=pooled)
    hot_engine = create_hot_engine(settings.database_url, transaction_pooling=pooled)
    metrics = Metrics(registry or CollectorRegistry(), settings.metrics_max_tenants, {e.name for e in ENDPOINTS})
    prices = PriceTable()
    hasher = KeyHasher(settings.key_pepper or "")
    keys = KeyCache(hot_engine, metrics, hasher, settings.key_cache_ttl_s, settings.auth_failures_per_minute)
    upstream = Upstream(
        settings.upstream_url,
        settings.upstream_api_key,
        settings.upstream_max_connections,
        settings.upstream_connect_timeout_s,
        settings.upstream_read_timeout_s,
    )
    spool = None
    if settings.spool:
        spool = Spool(
            settings.data_dir.resolve() / "spool",
            metrics,
            settings.spool_segment_bytes,
            settings.spool_max_bytes,
            settings.spool_fsync,
            settings.spool_fsync_interval_ms / 1000,
        )
    ledger = LedgerWriter(
        engine,
        metrics,
        settings.ledger_batch_rows,
        settings.ledger_flush_interval_s,
        settings.ledger_max_pending,
        spool,
    )
    limiter = Limiter(
        engine,
        hot_engine,
        prices,
        metrics,
        settings.hold_ttl_s,
        settings.reserve_image_tokens,
        settings.reserve_server_tool_uses,
        settings.reserve_tool_result_tokens,
    )
    billing = BatchBilling(engine, upstream, ledger, prices, metrics, settings.batch_poll_s)
    gate = Gate(metrics, settings.max_in_flight, settings.tenant_max_in_flight, settings.tenant_max_drains)
    gateway = Gateway(
        keys,
        limiter,
        upstream,
        Recorder(ledger, prices, metrics),
        gate,
        metrics,
        settings.max_body_bytes,
        settings.body_timeout_s,
        settings.disconnect_drain_s,
        Services(engine, settings.public_url, limiter, billing),
    )
    checker = Checker(engine, metrics)
    deliverer = Deliverer(engine, metrics, settings.webhook_timeout_s, settings.webhook_retry_s)
    return Parts(
        settings,
        engine,
        hot_engine,
        metrics,
        prices,
        hasher,
        keys,
        upstream,
        ledger,
        billing,
        gateway,
        checker,
        deliverer,
    )


# A busy process always has thousands of young objects alive (requests in flight, rows waiting for
# the ledger), so at Python's default of 700 the cycle collector walked them every 25 limited
# requests (every 90 unlimited ones), about 10 µs a request in all (docs/benchmarks.md). Requests
# free what they allocate by reference counting; only the rare cycle (an exception's traceback)
# waits for the collector, which now runs once 10,000 more objects are alive than at its last pass.
YOUNG_GC_OBJECTS = 10_000


def create_app_from_env() -> ProxyRoutes:
    """The app of one worker process of `meter serve --workers N`: settings come from the environment."""
    return create_app(Settings.from_env())


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> ProxyRoutes:
    """The ASGI app: Anthropic's paths go straight to the gateway, the rest to Litestar."""
    parts = build_parts(settings, registry)
    server.configure(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await parts.prices.load(parts.engine)
        parts.ledger.start()
        # What start-up allocated lives as long as the process: keep it out of every GC pass.
        gc.freeze()
        gc.set_threshold(YOUNG_GC_OBJECTS, *gc.get_threshold()[1:])
        background = [
            asyncio.create_task(parts.prices.follow(parts.engine)),
            asyncio.create_task(parts.gateway.limiter.housekeeping()),
            asyncio.create_task(parts.keys.listen(settings.listen_url(), parts.gateway.limiter.followers())),
            asyncio.create_task(report_budgets(parts.engine, parts.metrics)),
            asyncio.create_task(keep_partitioned(parts.engine, parts.metrics, settings.ledger_retention_months)),
            asyncio.create_task(parts.billing.run()),
            asyncio.create_task(keep_reconciled(settings, parts.engine, parts.metrics, parts.prices)),
            asyncio.create_task(
                webhooks.run(
                    parts.webhook_checker, parts.webhook_deliverer, settings.webhook_check_s, settings.webhook_poll_s
                )
            ),
        ]
        if parts.ledger.spool is not None:
            background.append(asyncio.create_task(parts.ledger.spool.sync_periodically()))
        stop_exposition = None
        if settings.metrics_address and settings.workers == 1:
            stop_exposition = serve_exposition(*settings.metrics_host_port(), parts.metrics.registry)
        try:
            yield
        finally:
            if stop_exposition is not None:
                stop_exposition()
            for task in background:
                task.cancel()
            # Let them finish their cleanup (a billing worker gives its lease back) while the
            # database is still there.
            await asyncio.wait(background, timeout=5.0)
            await parts.gateway.limiter.leases.close()
            await parts.ledger.close(settings.shutdown_grace_s)
            await parts.upstream.aclose()
            await parts.engine.dispose()
            await parts.hot_engine.dispose()
            mark_process_dead()

    actor = token_actor(settings.admin_token or "")
    guard = admin_guard(settings.admin_token or "")
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
            BatchController,
            WebhookController,
        ],
        guards=[guard],
        dependencies={
            "db": Provide(lambda: parts.engine, sync_to_thread=False),
            "keys": Provide(lambda: parts.keys, sync_to_thread=False),
            "hasher": Provide(lambda: parts.hasher, sync_to_thread=False),
            "price_table": Provide(lambda: parts.prices, sync_to_thread=False),
            "actor": Provide(lambda: actor, sync_to_thread=False),
        },
    )
    heads = migrate.current_heads(settings.database_url or "")
    service_routes = [*health_routes(parts.engine, heads), exposition_route(parts.metrics.registry, [guard])]
    console = console_router(settings, parts.engine, parts.keys, parts.hasher, parts.prices)
    app = Litestar(
        route_handlers=[admin, console, *service_routes],
        lifespan=[lifespan],
        exception_handlers={Exception: render_error},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="meter", version="0.1.0", path="/schema"),
    )
    return ProxyRoutes(app, parts.gateway, Cors(settings.cors_origins))
