"""The console's session: a cookie signed with HMAC-SHA256, holding who the visitor is (signed in
or not), when the session ends and its CSRF token. Nothing is kept on the server, so every meter
process of a database accepts the sessions of the others.

The signing key is derived from the key pepper and the admin token: a copy of the database cannot
forge a session, and changing the admin token signs every console session out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import msgspec

COOKIE = "meter_console"
# A visitor who has not signed in yet holds a session only for the sign-in form's CSRF token.
ANONYMOUS_TTL_S = 3600


class Session(msgspec.Struct, frozen=True):
    csrf: str
    expires: int  # unix seconds
    signed_in: bool = False

    def ttl_s(self) -> int:
        return max(0, self.expires - int(time.time()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, key_pepper: str, admin_token: str, signed_in_ttl_s: int) -> None:
        self._key = hmac.new(
            key_pepper.encode(), b"meter console session\x00" + admin_token.encode(), hashlib.sha256
        ).digest()
        self.signed_in_ttl_s = signed_in_ttl_s

    def new(self, signed_in: bool) -> Session:
        """A fresh session with a fresh CSRF token (a sign-in never keeps the one it came with)."""
        ttl = self.signed_in_ttl_s if signed_in else ANONYMOUS_TTL_S
        return Session(csrf=secrets.token_urlsafe(32), expires=int(time.time()) + ttl, signed_in=signed_in)

    def dump(self, session: Session) -> str:
        payload = _b64(msgspec.json.encode(session))
        return payload + "." + self._mac(payload)

    def load(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if it is missing, forged, malformed or over."""
        if not cookie or len(cookie) > 1024:
            return None
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            session = msgspec.json.decode(_unb64(payload), type=Session)
        except (ValueError, msgspec.DecodeError):
            return None
        return session if session.expires > time.time() else None

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def same_token(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
