"""What every console request passes before its handler: its session is read from the cookie, a
page needs a signed-in session (else the sign-in page), and every form post needs the session's
CSRF token and must come from the console's own origin (else 403, and nothing changes).

Handlers marked `opt={"public": True}` (the sign-in page, static files) are reachable signed out;
their posts still need the CSRF token of the visitor's anonymous session.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response

from meter.console.render import problem, redirect
from meter.console.session import COOKIE, Session, SessionSigner, same_token
from meter.proxy.auth import FailureThrottle

SIGN_IN = "/console/sign-in"
SAFE_METHODS = ("GET", "HEAD")
CSRF_FIELD = "csrf"
REFUSED = (
    "This form did not come from a page of this console session, so nothing was changed. Reload the page and try again."
)


class ConsoleGuard:
    def __init__(
        self, signer: SessionSigner, admin_token: str, failures_per_minute: int, public_url: str | None
    ) -> None:
        self.signer = signer
        self._admin_token = admin_token.encode()
        # Sign-in failures are throttled per client address, as failed tenant keys are.
        self.throttle = FailureThrottle(failures_per_minute)
        self._always_secure = bool(public_url and public_url.startswith("https://"))
        self._public_host = urlsplit(public_url).netloc if public_url else None

    async def before_request(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        session = self.signer.load(request.cookies.get(COOKIE))
        request.state.console_session = session
        public = bool(request.route_handler.opt.get("public"))
        if request.method not in SAFE_METHODS:
            form = await request.form()
            token = form.get(CSRF_FIELD)
            if (
                session is None
                or not self._same_origin(request)
                or not same_token(token if isinstance(token, str) else None, session.csrf)
            ):
                return problem(request, 403, "Refused", REFUSED)
        if public or (session is not None and session.signed_in):
            return None
        if request.method in SAFE_METHODS:
            return redirect(SIGN_IN)
        return problem(request, 403, "Signed out", "Your console session has ended. Sign in again.")

    def admin_token_matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.strip().encode(), self._admin_token)

    def _same_origin(self, request: Request[Any, Any, Any]) -> bool:
        """A browser names where a post comes from; one from another site is refused whatever it carries."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not every client sends it; the CSRF token still has to match
        host = urlsplit(origin).netloc
        return bool(host) and host in (request.headers.get("host"), self._public_host)

    def keep(self, request: Request[Any, Any, Any], response: Response[Any], session: Session) -> Response[Any]:
        """Set `session` as the visitor's cookie: HttpOnly, SameSite=Strict, Secure over https."""
        response.set_cookie(
            COOKIE,
            self.signer.dump(session),
            path="/console",
            max_age=session.ttl_s(),
            httponly=True,
            samesite="strict",
            secure=self._always_secure or request.url.scheme == "https",
        )
        return response

    def forget(self, response: Response[Any]) -> Response[Any]:
        response.delete_cookie(COOKIE, path="/console")
        return response
