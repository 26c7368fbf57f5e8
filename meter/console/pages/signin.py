"""Signing in with the admin token (into a signed session cookie) and out again."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post

from meter.console.guard import SIGN_IN, ConsoleGuard
from meter.console.render import page, problem, redirect, session_of

HOME = "/console/tenants"


class SignInController(Controller):
    path = "/console"

    @get("", opt={"public": True}, include_in_schema=False)
    async def home(self, request: Request[Any, Any, Any]) -> Response[Any]:
        session = session_of(request)
        return redirect(HOME if session and session.signed_in else SIGN_IN)

    @get("/sign-in", opt={"public": True}, include_in_schema=False)
    async def form(self, request: Request[Any, Any, Any], guard: ConsoleGuard) -> Response[Any]:
        session = session_of(request)
        if session is not None and session.signed_in:
            return redirect(HOME)
        if session is None:
            request.state.console_session = session = guard.signer.new(signed_in=False)
        return guard.keep(request, page(request, "sign_in.html", title="Sign in", error=None), session)

    @post("/sign-in", opt={"public": True}, include_in_schema=False)
    async def sign_in(self, request: Request[Any, Any, Any], guard: ConsoleGuard) -> Response[Any]:
        address = request.client.host if request.client else "unknown"
        if wait := guard.throttle.refusing(address):
            response = problem(
                request, 429, "Too many attempts", f"Too many failed sign-ins from here. Try again in {wait} s."
            )
            response.headers["retry-after"] = str(wait)
            return response
        token = (await request.form()).get("token")
        if not isinstance(token, str) or not guard.admin_token_matches(token):
            guard.throttle.failed(address)
            error = "That is not this meter's admin token."
            return page(request, "sign_in.html", status=401, title="Sign in", error=error)
        # A new session and CSRF token: nothing a visitor held before signing in carries over.
        return guard.keep(request, redirect(HOME), guard.signer.new(signed_in=True))

    @post("/sign-out", include_in_schema=False)
    async def sign_out(self, guard: ConsoleGuard) -> Response[Any]:
        return guard.forget(redirect(SIGN_IN))
