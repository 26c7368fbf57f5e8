"""The console's router: its pages, its static files, the guard every request passes, and the
error pages its handlers' failures become (HTML, never a traceback, never a 500 for bad input)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.console.guard import ConsoleGuard
from meter.console.pages.audit import AuditController
from meter.console.pages.keys import KeysController
from meter.console.pages.prices import PricesController
from meter.console.pages.signin import SignInController
from meter.console.pages.statement import StatementController
from meter.console.pages.tenant import TenantController
from meter.console.pages.tenants import TenantsController
from meter.console.pages.usage import UsageController
from meter.console.pages.webhooks import WebhooksController
from meter.console.render import STATIC, problem
from meter.console.session import SessionSigner
from meter.credentials import KeyHasher
from meter.errors import as_meter_error
from meter.pricing import PriceTable
from meter.proxy.auth import KeyCache
from meter.settings import Settings

PAGES: list[ControllerRouterHandler] = [
    SignInController,
    TenantsController,
    TenantController,
    KeysController,
    UsageController,
    StatementController,
    PricesController,
    WebhooksController,
    AuditController,
]
TITLES = {400: "Not accepted", 401: "Not signed in", 403: "Refused", 404: "Not found", 405: "Not allowed"}


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Any failure in a console handler as a page: meter's error tree says which status and why."""
    error = as_meter_error(exc)  # logs what is not the request's fault
    message = error.message if error.status < 500 else "Something went wrong in meter; the log says what."
    return problem(request, error.status, TITLES.get(error.status, "Error"), message)


def console_router(
    settings: Settings, engine: AsyncEngine, keys: KeyCache, hasher: KeyHasher, prices: PriceTable
) -> Router:
    signer = SessionSigner(settings.key_pepper or "", settings.admin_token or "", settings.console_session_s)
    guard = ConsoleGuard(signer, settings.admin_token or "", settings.auth_failures_per_minute, settings.public_url)
    static = create_static_files_router(
        path="/console/static", directories=[STATIC], opt={"public": True}, include_in_schema=False
    )
    return Router(
        path="/",
        route_handlers=[*PAGES, static],
        before_request=guard.before_request,
        exception_handlers={Exception: error_page},
        dependencies={
            "db": Provide(lambda: engine, sync_to_thread=False),
            "keys": Provide(lambda: keys, sync_to_thread=False),
            "hasher": Provide(lambda: hasher, sync_to_thread=False),
            "price_table": Provide(lambda: prices, sync_to_thread=False),
            "guard": Provide(lambda: guard, sync_to_thread=False),
        },
    )
