"""Traffic for fault tests: clients in threads sending JSON and streaming calls to one meter until
stopped, noting the request id of every call answered 200 and read to its end."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support import Admin

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi there"}]}
# A limited tenant reserves before each call and settles after: holds are there to be settled.
LIMITS = {"max_concurrent_requests": 1000, "tokens_per_day": 10_000_000_000, "budget_usd_per_month": "100000"}


def tenant_headers(admin: Admin, limits: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    tenant = admin.create_tenant(f"faults-{secrets.token_hex(3)}")
    if limits:
        assert admin.request("PUT", f"/admin/tenants/{tenant['id']}/limits", json=limits).status_code == 200
    key = admin.issue_key(tenant["id"])
    return tenant["id"], {"x-api-key": key["key"], "anthropic-version": "2023-06-01"}


@dataclass
class Traffic:
    base_url: str
    headers: dict[str, str]
    clients: int = 4
    # Sent on every call (x-demo-* controls of the demo upstream); streams get `stream_headers` too.
    stream_headers: dict[str, str] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    unreachable: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as http:
            calls = 0
            while not self._stop.is_set():
                calls += 1
                try:
                    if (calls + number) % 3 == 0:
                        self._stream(http)
                    else:
                        self._note(http.post("/v1/messages", json=BODY), True)
                except httpx.HTTPError:
                    self.unreachable += 1  # meter went away under the call: not answered

    def _stream(self, http: httpx.Client) -> None:
        with http.stream("POST", "/v1/messages", json={**BODY, "stream": True}, headers=self.stream_headers) as reply:
            body = b"".join(reply.iter_bytes())
            self._note(reply, b'"type":"message_stop"' in body)

    def _note(self, response: httpx.Response, whole: bool) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 200 and whole:
            self.answered.add(response.headers["x-meter-request-id"])


SLOW = {"x-demo-output-tokens": "400", "x-demo-tokens-per-second": "20"}  # a 20 s stream


class SlowStream:
    """A stream that is still running when the test strikes: its request id, and what it got."""

    def __init__(self, base_url: str, headers: dict[str, str], controls: dict[str, str] | None = None) -> None:
        self.request_id = ""
        self.received = b""
        self._begun = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, {**headers, **(controls or SLOW)}))
        self._thread.start()
        assert self._begun.wait(30), "the slow stream did not start"

    def _run(self, base_url: str, headers: dict[str, str]) -> None:
        body = {**BODY, "max_tokens": 1000, "stream": True}
        try:
            with httpx.stream("POST", base_url + "/v1/messages", json=body, headers=headers, timeout=60) as reply:
                self.request_id = reply.headers["x-meter-request-id"]
                for chunk in reply.iter_bytes():
                    self.received += chunk
                    if b"content_block_delta" in self.received:
                        self._begun.set()
        except httpx.HTTPError:
            pass  # meter went away: the point of the test
        finally:
            self._begun.set()

    def join(self) -> None:
        self._thread.join(60)
