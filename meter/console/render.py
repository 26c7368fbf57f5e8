"""HTML for the console: one Jinja environment over the package's templates (autoescaped, strict
about undefined names), the filters pages share, and the response headers every page carries."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from litestar import MediaType, Request, Response
from litestar.response import Redirect

from meter import money
from meter.console.nav import NAV
from meter.console.session import Session

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Everything the console serves comes from meter itself: no inline script, no other origin.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _usd(value: Decimal | str | int | None) -> str:
    if value is None:
        return "—"
    text = money.usd(Decimal(str(value)))
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}${int(whole.lstrip('-')):,}.{fraction}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _when(value: datetime | date | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # the templates are the package's: read once per process
)
_env.filters.update(usd=_usd, count=_count, when=_when, percent=_percent)


def session_of(request: Request[Any, Any, Any]) -> Session | None:
    session: Session | None = request.state.get("console_session")
    return session


def page(request: Request[Any, Any, Any], template: str, status: int = 200, **context: Any) -> Response[str]:
    """A full page; the base template gets the navigation, the current path and the CSRF token."""
    session = session_of(request)
    html = _env.get_template(template).render(
        nav=NAV,
        path=request.url.path,
        csrf=session.csrf if session else "",
        signed_in=bool(session and session.signed_in),
        **context,
    )
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=SECURITY_HEADERS)


def problem(request: Request[Any, Any, Any], status: int, title: str, message: str) -> Response[str]:
    return page(request, "problem.html", status=status, title=title, message=message)


def redirect(path: str) -> Redirect:
    """After a change, the page that shows it (303: the browser follows with a GET)."""
    return Redirect(path, status_code=303, headers=SECURITY_HEADERS)
