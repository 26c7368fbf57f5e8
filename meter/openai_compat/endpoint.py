"""`POST /v1/chat/completions`: the OpenAI dialect of the gateway, a handler of the endpoint table
(meter/proxy/handler.py). The tenant's request is translated into an Anthropic Messages request,
which meter meters like any other; the answer, stream or error is translated back.

Errors keep their HTTP status and headers (retry-after, rate-limit headers) and take OpenAI's
shape, so the openai SDK raises the exception that matches the status.
"""

from __future__ import annotations

import time

from meter.errors import InvalidRequest, MeterError
from meter.files import check_owned
from meter.openai_compat.errors import (
    OpenAIRequestError,
    UpstreamFormatError,
    anthropic_error_to_openai,
    openai_error_body,
    openai_error_kind,
)
from meter.openai_compat.request import to_anthropic
from meter.openai_compat.response import to_openai
from meter.openai_compat.stream import ChunkTranslator
from meter.proxy.exchange import Exchange
from meter.proxy.handler import ANTHROPIC_VERSION, Services, TenantRequest, UpstreamRequest
from meter.proxy.request import parse_body, read_document, read_fields


class InvalidChatRequest(InvalidRequest):
    """A request the translation refused, naming the parameter as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ChatCompletions:
    upstream_path = "/v1/messages"
    passthrough = False

    def __init__(self, services: Services | None = None) -> None:
        self.services = services or Services()
        self._model = ""
        self._include_usage = False
        self._created = int(time.time())

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest:
        # The tenant's body must be one that every parser reads alike before it is translated.
        await read_document(request.body)
        body = self.request(request.body)
        document = parse_body(body)
        read_fields(exchange, document, len(body))
        if exchange.shape is not None and exchange.shape.file_ids:
            await check_owned(self.services.engine, exchange.caller.tenant_id, exchange.shape.file_ids)
        headers = [*request.forward_headers, (b"anthropic-version", ANTHROPIC_VERSION)]
        return UpstreamRequest("POST", self.upstream_path, b"", headers, body, document)

    def request(self, body: bytes) -> bytes:
        """The Anthropic request body for the tenant's; raises InvalidChatRequest if it is invalid."""
        try:
            anthropic_body, self._model, _, self._include_usage = to_anthropic(body)
        except OpenAIRequestError as exc:
            raise InvalidChatRequest(exc.message, exc.param, exc.code) from None
        return anthropic_body

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, anthropic_error_to_openai(status, body)
        try:
            return status, to_openai(body, self._model, self._created)
        except UpstreamFormatError:
            return 502, openai_error_body("The upstream answer was not a message.", "server_error", "bad_upstream")

    def stream(self) -> ChunkTranslator:
        return ChunkTranslator(self._model, self._created, self._include_usage)

    def error(self, error: MeterError, request_id: str) -> bytes:
        if isinstance(error, InvalidChatRequest):
            return openai_error_body(error.message, "invalid_request_error", error.code, error.param)
        kind, code = openai_error_kind(error.error_type, error.status)
        return openai_error_body(error.message, kind, code)
