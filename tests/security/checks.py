"""What the hostile-input tests check, in one place: what the demo upstream may have seen, and what
an error of each dialect looks like."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tests.support import Process, upstream_requests

# What a tenant may make the upstream see: the endpoint table's paths (a model id as the table
# allows it), with any query string.
_ALLOWED = (
    ("POST", re.compile(r"/v1/messages")),
    ("POST", re.compile(r"/v1/messages/count_tokens")),
    ("GET", re.compile(r"/v1/models")),
    ("GET", re.compile(r"/v1/models/[A-Za-z0-9][A-Za-z0-9._%-]{0,767}")),
)


def allowed_upstream_request(method: str, raw_path: str) -> bool:
    path = raw_path.split("?", 1)[0]
    return any(method == allowed and pattern.fullmatch(path) for allowed, pattern in _ALLOWED)


class UpstreamWatch:
    """The requests the demo upstream receives from now on."""

    def __init__(self, upstream: Process) -> None:
        self._upstream = upstream
        self._before = len(upstream_requests(upstream))

    def new(self) -> list[tuple[str, str]]:
        return upstream_requests(self._upstream)[self._before :]


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
