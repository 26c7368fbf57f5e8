"""The endpoint table: every method and path a tenant may call, and nothing else.

A request is matched on its decoded path, segment by segment, against these entries; a path that
matches none is a 404 that never reaches the upstream. What is forwarded is the entry's own path
with its parameters filled in, never the client's raw path. Adding an endpoint is one entry here
plus its handler (proxy/handler.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from meter.batches.endpoints import (
    MAX_BATCH_BYTES,
    BatchCancel,
    BatchCreate,
    BatchDelete,
    BatchList,
    BatchResults,
    BatchRetrieve,
)
from meter.files import MAX_UPLOAD_BYTES, FileContent, FileDelete, FileList, FileRetrieve, FileUpload
from meter.openai_compat.endpoint import ChatCompletions
from meter.proxy.handler import Handler, Services
from meter.proxy.messages import Messages
from meter.proxy.models import Models
from meter.reports.endpoints import CostReport, Limits, UsageReport

# What each kind of path parameter may be.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
PARAMETERS = {"model_id": re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,255}"), "batch_id": _ID, "file_id": _ID}


@dataclass(frozen=True)
class Endpoint:
    # Recorded in the ledger's `endpoint` column and the metrics' `endpoint` label.
    name: str
    method: str
    # Literal segments and {parameters} (PARAMETERS says what each may be).
    path: str
    handler: Callable[[Services], Handler]
    # Generates tokens: priced, and reserved at its worst case before it is forwarded.
    billed: bool = False
    # The body's size cap (None: METER_MAX_BODY_BYTES), and whether it is spooled to a temporary
    # file (for bodies too large to hold in memory) instead of read into memory.
    body_limit: int | None = None
    spooled: bool = False
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.path.strip("/").split("/")))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters if `segments` is this endpoint's path, else None."""
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            if pattern.startswith("{"):
                name = pattern[1:-1]
                if not PARAMETERS[name].fullmatch(segment):
                    return None
                params[name] = segment
            elif pattern != segment:
                return None
        return params

    def path_with(self, params: dict[str, str]) -> str:
        """This endpoint's path with its parameters filled in, each percent-encoded."""
        return "/" + "/".join(quote(params[s[1:-1]], safe="") if s.startswith("{") else s for s in self.segments)


# Every other upstream path is refused (404, never forwarded), by decision: the organisation and
# admin API (`/v1/organizations/...`: the operator's whole organisation; only its usage and cost
# reports are listed, answered by meter with the caller's own usage), Skills and containers
# (`/v1/skills`, `/v1/containers`: created with the operator's key, they would be shared by every
# tenant, with no ownership meter could enforce), and anything Anthropic adds until it is listed.
BATCHES = "/v1/messages/batches"
ENDPOINTS = (
    Endpoint("messages", "POST", "/v1/messages", Messages, billed=True),
    Endpoint("count_tokens", "POST", "/v1/messages/count_tokens", Messages),
    Endpoint("models", "GET", "/v1/models", Models),
    Endpoint("models", "GET", "/v1/models/{model_id}", Models),
    Endpoint("chat.completions", "POST", "/v1/chat/completions", ChatCompletions, billed=True),
    Endpoint("batches.create", "POST", BATCHES, BatchCreate, body_limit=MAX_BATCH_BYTES, spooled=True),
    Endpoint("batches.list", "GET", BATCHES, BatchList),
    Endpoint("batches.retrieve", "GET", BATCHES + "/{batch_id}", BatchRetrieve),
    Endpoint("batches.cancel", "POST", BATCHES + "/{batch_id}/cancel", BatchCancel),
    Endpoint("batches.delete", "DELETE", BATCHES + "/{batch_id}", BatchDelete),
    Endpoint("batches.results", "GET", BATCHES + "/{batch_id}/results", BatchResults),
    Endpoint("files.upload", "POST", "/v1/files", FileUpload, body_limit=MAX_UPLOAD_BYTES, spooled=True),
    Endpoint("files.list", "GET", "/v1/files", FileList),
    Endpoint("files.retrieve", "GET", "/v1/files/{file_id}", FileRetrieve),
    Endpoint("files.content", "GET", "/v1/files/{file_id}/content", FileContent),
    Endpoint("files.delete", "DELETE", "/v1/files/{file_id}", FileDelete),
    # Answered by meter from its ledger and limits, for the caller's tenant only (meter/reports).
    Endpoint("usage_report", "GET", "/v1/organizations/usage_report/messages", UsageReport),
    Endpoint("cost_report", "GET", "/v1/organizations/cost_report", CostReport),
    Endpoint("meter.limits", "GET", "/v1/meter/limits", Limits),
)


@dataclass(frozen=True)
class Route:
    """A path that matched: the endpoint for the request's method (None if the path has none for
    it), every method the path answers, and its parameters."""

    endpoint: Endpoint | None
    allowed: tuple[Endpoint, ...]
    params: dict[str, str]
    path: str


# Paths without parameters are looked up (nearly every request has one); the rest are matched.
_LITERAL: dict[tuple[str, ...], list[Endpoint]] = {}
for _endpoint in ENDPOINTS:
    if not any(segment.startswith("{") for segment in _endpoint.segments):
        _LITERAL.setdefault(_endpoint.segments, []).append(_endpoint)
_PATTERNED = [endpoint for endpoint in ENDPOINTS if endpoint.segments not in _LITERAL]
_NO_PARAMS: dict[str, str] = {}
# A route for each literal path and method, made once: routing the common request allocates nothing.
_ROUTES = {
    (path, endpoint.method): Route(endpoint, tuple(endpoints), _NO_PARAMS, endpoint.path)
    for path, endpoints in _LITERAL.items()
    for endpoint in endpoints
}


def route(method: str, segments: list[str]) -> Route | None:
    """The route of a request whose path is `segments` (see `path_segments`), or None if the
    path is not one of the table's."""
    literal = _LITERAL.get(tuple(segments))
    if literal is not None:
        return _ROUTES.get((tuple(segments), method)) or Route(None, tuple(literal), _NO_PARAMS, "")
    matches = [(endpoint, params) for endpoint in _PATTERNED if (params := endpoint.match(segments)) is not None]
    if not matches:
        return None
    chosen = next(((e, p) for e, p in matches if e.method == method), None)
    allowed = tuple(endpoint for endpoint, _ in matches)
    if chosen is None:
        return Route(None, allowed, matches[0][1], "")
    endpoint, params = chosen
    return Route(endpoint, allowed, params, endpoint.path_with(params))


# Percent-encodings that could change which path a server further on sees: dots and slashes (either
# case, so `%2e%2E` too), backslashes, a percent sign (double encoding) and NUL.
_ENCODED_DANGER = re.compile(r"%(2[eEfF5]|5[cC]|00)")


def path_segments(raw_path: str) -> list[str] | None:
    """The decoded segments of a request path, or None for a path no endpoint may have: one with
    `.` or `..` segments, empty segments (`//`, a trailing slash), encoded dots, slashes or percent
    signs, or control characters. Such a request is refused before anything else looks at it."""
    if not raw_path.startswith("/") or _ENCODED_DANGER.search(raw_path):
        return None
    if raw_path == "/":
        return []
    segments = raw_path[1:].split("/")
    if "%" in raw_path:
        segments = [unquote(segment) for segment in segments]
    for segment in segments:
        if segment in ("", ".", "..") or not segment.isprintable() or "\\" in segment:
            return None
    return segments
