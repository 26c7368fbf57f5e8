"""OpenAI Chat Completions compatibility: pure translation to and from the Anthropic Messages API.

    request.py   OpenAI request body -> Anthropic request body (messages.py converts the messages)
    response.py  Anthropic JSON reply -> chat.completion
    stream.py    Anthropic SSE -> chat.completion.chunk SSE, incrementally
    errors.py    OpenAI-shaped errors, and Anthropic errors re-rendered in that shape

No I/O here: the `/v1/chat/completions` route sends the translated request upstream and meters
the native Anthropic usage like any other call.
"""

from meter.openai_compat.errors import (
    OpenAIRequestError,
    UpstreamFormatError,
    anthropic_error_to_openai,
    openai_error_body,
)
from meter.openai_compat.request import to_anthropic
from meter.openai_compat.response import to_openai
from meter.openai_compat.stream import ChunkTranslator

__all__ = [
    "ChunkTranslator",
    "OpenAIRequestError",
    "UpstreamFormatError",
    "anthropic_error_to_openai",
    "openai_error_body",
    "to_anthropic",
    "to_openai",
]
