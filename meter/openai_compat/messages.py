"""OpenAI `messages` -> Anthropic `system` + `messages`.

Anthropic keeps instructions out of the conversation and wants user and assistant turns to
alternate, with tool results sent back as blocks of a user turn. So system and developer messages
are hoisted into `system` (in order, wherever they appear), and every message is appended as
blocks to the previous turn when it has the same Anthropic role: consecutive tool messages and a
user message after them become one user turn. A message's `name` has no Anthropic equivalent and
is ignored.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from meter.openai_compat.errors import OpenAIRequestError

Block = dict[str, Any]
Turn = dict[str, Any]

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[^;,]*)*);base64,(.*)", re.DOTALL)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def convert_messages(messages: Any) -> tuple[list[Block], list[Turn]]:
    """(system text blocks, alternating Anthropic turns) for OpenAI's `messages` array."""
    if messages is None:
        raise OpenAIRequestError("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise OpenAIRequestError("'messages' must be an array.", "messages", "invalid_type")
    if not messages:
        raise OpenAIRequestError("'messages' must contain at least one message.", "messages", "empty_array")
    system: list[Block] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise OpenAIRequestError(f"'{param}' must be an object.", param, "invalid_type")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"{param}.content", ("text",)))
        elif role == "user":
            blocks = _user_blocks(content, f"{param}.content")
            if not blocks:
                raise OpenAIRequestError(f"'{param}.content' must not be empty.", f"{param}.content", "invalid_value")
            _append(turns, "user", blocks)
        elif role == "assistant":
            blocks = _assistant_blocks(message, param)
            # An assistant message with neither text nor tool calls says nothing, and Anthropic
            # rejects empty turns: drop it (the turns around it then merge).
            if blocks:
                _append(turns, "assistant", blocks)
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, param)])
        elif role == "function":
            raise _unsupported(f"{param}.role", "The legacy 'function' role is not supported; use 'tool' messages.")
        else:
            raise OpenAIRequestError(
                f"Invalid value for '{param}.role': expected system, developer, user, assistant or tool.",
                f"{param}.role",
                "invalid_value",
            )
    if not turns:
        raise OpenAIRequestError("'messages' must contain at least one user or assistant message.", "messages")
    return system, turns


def _append(turns: list[Turn], role: str, blocks: list[Block]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _unsupported(param: str, message: str) -> OpenAIRequestError:
    return OpenAIRequestError(message, param, "unsupported_value")


def _text_blocks(content: Any, param: str, part_types: tuple[str, ...], nullable: bool = False) -> list[Block]:
    """Text blocks for a string or an array of text parts; Anthropic rejects empty text blocks."""
    if content is None and nullable:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise OpenAIRequestError(f"'{param}' must be a string or an array of content parts.", param, "invalid_type")
    blocks = []
    for j, part in enumerate(content):
        blocks.extend(_text_part(part, f"{param}[{j}]", part_types))
    return blocks


def _text_part(part: Any, param: str, part_types: tuple[str, ...]) -> list[Block]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in part_types:
        raise _unsupported(f"{param}.type", f"'{param}' must be a content part of type {' or '.join(part_types)}.")
    text = part.get(kind)  # a text part keeps its text under "text", a refusal under "refusal"
    if not isinstance(text, str):
        raise OpenAIRequestError(f"'{param}.{kind}' must be a string.", f"{param}.{kind}", "invalid_type")
    return [{"type": "text", "text": text}] if text else []


def _user_blocks(content: Any, param: str) -> list[Block]:
    if not isinstance(content, list):
        return _text_blocks(content, param, ("text",))
    blocks: list[Block] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{param}[{j}].image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{param}[{j}].file"))
        elif kind == "text":
            blocks.extend(_text_part(part, f"{param}[{j}]", ("text",)))
        else:
            raise _unsupported(
                f"{param}[{j}].type", f"Content part type {kind!r} is not supported: use text, image_url or file."
            )
    return blocks


def _image(image_url: Any, param: str) -> Block:
    # OpenAI's own shape is {"url", "detail"}; a bare string is an older form some clients send.
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise OpenAIRequestError(f"'{param}.url' must be a string.", f"{param}.url", "invalid_type")
    if url.startswith("data:"):
        media_type, data = _data_url(url, f"{param}.url")
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type
        if media_type not in _IMAGE_TYPES:
            raise _unsupported(
                f"{param}.url", f"Image type {media_type!r} is not supported: use jpeg, png, gif or webp."
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise OpenAIRequestError(
        f"'{param}.url' must be an https URL or a base64 data URL.", f"{param}.url", "invalid_value"
    )


def _document(file: Any, param: str) -> Block:
    """A PDF sent inline as `file_data`; OpenAI file ids point into OpenAI's storage, out of reach."""
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise _unsupported(param, "Only files sent inline as 'file_data' (a base64 PDF data URL) are supported.")
    media_type, data = _data_url(data_url, f"{param}.file_data")
    if media_type != "application/pdf":
        raise _unsupported(f"{param}.file_data", f"File type {media_type!r} is not supported: only application/pdf.")
    block: Block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block


def _data_url(url: str, param: str) -> tuple[str, str]:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise OpenAIRequestError(
            f"'{param}' must be a base64 data URL (data:<media type>;base64,<data>).", param, "invalid_value"
        )
    return match.group(1).lower(), match.group(3)


def _assistant_blocks(message: dict[str, Any], param: str) -> list[Block]:
    for legacy in ("function_call", "audio"):
        if message.get(legacy) is not None:
            raise _unsupported(f"{param}.{legacy}", f"'{legacy}' in assistant messages is not supported.")
    blocks = _text_blocks(message.get("content"), f"{param}.content", ("text", "refusal"), nullable=True)
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise OpenAIRequestError(f"'{param}.tool_calls' must be an array.", f"{param}.tool_calls", "invalid_type")
    for k, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{param}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: Any, param: str) -> Block:
    if not isinstance(call, dict):
        raise OpenAIRequestError(f"'{param}' must be an object.", param, "invalid_type")
    if call.get("type", "function") != "function":
        raise _unsupported(f"{param}.type", "Only tool calls of type 'function' are supported.")
    function = call.get("function")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise OpenAIRequestError(f"'{param}.id' must be a non-empty string.", f"{param}.id", "invalid_value")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise OpenAIRequestError(f"'{param}.function.name' must be a string.", f"{param}.function.name", "invalid_type")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        raise OpenAIRequestError(
            f"'{param}.function.arguments' must be a JSON string.", f"{param}.function.arguments", "invalid_type"
        )
    return {"type": "tool_use", "id": call_id, "name": function["name"], "input": _arguments(arguments, param)}


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    # Some clients send "" for a function without parameters; Anthropic wants an object.
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise OpenAIRequestError(
            f"'{param}.function.arguments' must be a JSON object encoded as a string.",
            f"{param}.function.arguments",
            "invalid_value",
        )
    return value


def _tool_result(message: dict[str, Any], param: str) -> Block:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise OpenAIRequestError(
            f"'{param}.tool_call_id' must be a non-empty string.", f"{param}.tool_call_id", "invalid_value"
        )
    block: Block = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _text_blocks(content, f"{param}.content", ("text",))
        if parts:
            block["content"] = parts
    return block
