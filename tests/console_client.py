"""A client of meter's operator console as a browser without script sees it: it keeps the session
cookie, and fills in each form's CSRF token from the page it was served on."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support import ADMIN_TOKEN

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class Console:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def sign_in(self, token: str = ADMIN_TOKEN) -> httpx.Response:
        page = self.http.get("/console/sign-in")
        assert page.status_code == 200, page.text
        return self.http.post("/console/sign-in", data={"csrf": csrf_of(page.text), "token": token})

    def submit(self, page_path: str, action: str, fields: dict[str, str], **kwargs: Any) -> httpx.Response:
        """Post `fields` to `action` as the form on `page_path` would, with that page's CSRF token."""
        page = self.http.get(page_path)
        assert page.status_code == 200, page.text
        return self.http.post(action, data={"csrf": csrf_of(page.text), **fields}, **kwargs)

    def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 303, (response.status_code, response.text[:2000])
        return self.http.get(response.headers["location"])
