"""What the hostile-input tests check, in one place: what the demo upstream may have seen, and what
an error of each dialect looks like."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tests.support import Process, upstream_requests

# What a tenant may make the upstream see: the endpoint table's paths (ids as the table allows
# them, a model id percent-encoded), with any query string.
_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_ALLOWED = (
    ("POST", re.compile(r"/v1/messages")),
    ("POST", re.compile(r"/v1/messages/count_tokens")),
    ("GET", re.compile(r"/v1/models")),
    ("GET", re.compile(r"/v1/models/[A-Za-z0-9][A-Za-z0-9._%-]{0,767}")),
    ("POST", re.compile(r"/v1/messages/batches")),
    ("GET", re.compile(rf"/v1/messages/batches(/{_ID}(/results)?)?")),
    ("POST", re.compile(rf"/v1/messages/batches/{_ID}/cancel")),
    ("DELETE", re.compile(rf"/v1/messages/batches/{_ID}")),
    ("POST", re.compile(r"/v1/files")),
    ("GET", re.compile(rf"/v1/files(/{_ID}(/content)?)?")),
    ("DELETE", re.compile(rf"/v1/files/{_ID}")),
)
# What meter asks the upstream by itself, whatever a test does: the batch billing worker refreshes
# every batch in the database that has not ended (meter/batches/billing.py).
_BACKGROUND = ("GET", re.compile(rf"/v1/messages/batches/{_ID}(/results)?"))


def allowed_upstream_request(method: str, raw_path: str) -> bool:
    path = raw_path.split("?", 1)[0]
    return any(method == allowed and pattern.fullmatch(path) for allowed, pattern in _ALLOWED)


class UpstreamWatch:
    """The requests the demo upstream receives from now on."""

    def __init__(self, upstream: Process) -> None:
        self._upstream = upstream
        self._before = len(upstream_requests(upstream))

    def new(self) -> list[tuple[str, str]]:
        """Those requests, less meter's own background ones."""
        seen = upstream_requests(self._upstream)[self._before :]
        return [(m, p) for m, p in seen if not (m == _BACKGROUND[0] and _BACKGROUND[1].fullmatch(p.split("?")[0]))]


def is_json(headers: Mapping[str, str], body: bytes) -> Any:
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:200])
    return json.loads(body)


def anthropic_error(status: int, headers: Mapping[str, str], body: bytes, error_type: str | None = None) -> str:
    """Assert Anthropic's error shape; return the message."""
    payload = is_json(headers, body)
    assert payload["type"] == "error", payload
    error = payload["error"]
    assert isinstance(error["message"], str) and error["message"], payload
    if error_type is not None:
        assert error["type"] == error_type, (status, payload)
    message: str = error["message"]
    return message


def openai_error(status: int, headers: Mapping[str, str], body: bytes, error_type: str | None = None) -> str:
    """Assert OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`; return the message."""
    payload = is_json(headers, body)
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert {"message", "type", "param", "code"} <= set(error), payload
    assert isinstance(error["message"], str) and error["message"], payload
    if error_type is not None:
        assert error["type"] == error_type, (status, payload)
    message: str = error["message"]
    return message
