"""An OpenAI Chat Completions request body -> an Anthropic Messages request body.

Every parameter of OpenAI's API is either translated; ignored, when it is a hint or bookkeeping
that promises nothing about the answer's shape (`seed`, `store`, `metadata`, `service_tier`,
`prompt_cache_*`, `verbosity`); or refused with an `OpenAIRequestError` naming it, because
silently dropping `n`, `logprobs` or a JSON `response_format` would hand the client an answer of
another shape than it asked for. Unknown parameters are refused too, as OpenAI itself does.
`null` means "not given" throughout.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.openai_compat.errors import OpenAIRequestError
from meter.openai_compat.messages import convert_messages

# Anthropic requires max_tokens; OpenAI clients often leave it out.
DEFAULT_MAX_TOKENS = 4096

# Hints and bookkeeping with no Anthropic counterpart; ignoring them breaks nothing a client can
# rely on (OpenAI itself does not promise determinism for `seed`, nor a length for `verbosity`).
_IGNORED = frozenset(
    {
        "seed", "store", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "verbosity",
    }
)  # fmt: skip
_TRANSLATED = frozenset(
    {
        "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop",
        "tools", "tool_choice", "parallel_tool_calls", "stream", "stream_options", "user", "safety_identifier",
    }
)  # fmt: skip
# Parameters refused only when they ask for more than Claude can give (n=2, logprobs=true, ...).
_CHECKED = frozenset(
    {
        "n", "logprobs", "top_logprobs", "logit_bias", "response_format", "audio", "modalities", "functions",
        "function_call", "presence_penalty", "frequency_penalty", "prediction", "reasoning_effort",
        "web_search_options", "moderation",
    }
)  # fmt: skip
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def to_anthropic(body: bytes) -> tuple[bytes, str, bool, bool]:
    """(Anthropic JSON body, model, stream, include_usage) for an OpenAI request body."""
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise OpenAIRequestError(f"The request body is not valid JSON: {exc}", None, "invalid_json") from exc
    if not isinstance(request, dict):
        raise OpenAIRequestError("The request body must be a JSON object.", None, "invalid_json")
    for name in request:
        if name not in _TRANSLATED and name not in _IGNORED and name not in _CHECKED:
            raise OpenAIRequestError(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    _refuse_unsupported(request)

    model = request.get("model")
    if model is None:
        raise OpenAIRequestError("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("'model' must be a non-empty string.", "model", "invalid_type")
    system, turns = convert_messages(request.get("messages"))

    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(request), "messages": turns}
    if system:
        out["system"] = system
    temperature = _get(request, "temperature", (int, float), "a number")
    if temperature is not None:
        # Anthropic's range is [0, 1]; clamp like Anthropic's own OpenAI endpoint rather than refuse.
        out["temperature"] = min(max(temperature, 0), 1)
    top_p = _get(request, "top_p", (int, float), "a number")
    if top_p is not None:
        out["top_p"] = top_p
    stop = _stop_sequences(request.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    _tools(request, out)
    stream = _get(request, "stream", bool, "a boolean") or False
    if stream:
        out["stream"] = True
    options = _get(request, "stream_options", dict, "an object") or {}
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise OpenAIRequestError(
            "'stream_options.include_usage' must be a boolean.", "stream_options.include_usage", "invalid_type"
        )
    # safety_identifier is OpenAI's newer name for `user`; both identify the end user.
    user = _get(request, "safety_identifier", str, "a string") or _get(request, "user", str, "a string")
    if user:
        out["metadata"] = {"user_id": user}
    return msgspec.json.encode(out), model, stream, bool(stream and include_usage)


def _get(request: dict[str, Any], name: str, types: type | tuple[type, ...], described: str) -> Any:
    """request[name] if it has the right type, None if absent or null."""
    value = request.get(name)
    if value is None:
        return None
    wanted = types if isinstance(types, tuple) else (types,)
    # bool is an int in Python but not a number in JSON.
    if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
        raise OpenAIRequestError(f"'{name}' must be {described}.", name, "invalid_type")
    return value


def _refuse(name: str, message: str) -> OpenAIRequestError:
    return OpenAIRequestError(f"'{name}' is not supported: {message}", name, "unsupported_parameter")


def _refuse_unsupported(request: dict[str, Any]) -> None:
    n = _get(request, "n", int, "an integer")
    if n is not None and n != 1:
        raise _refuse("n", "Claude returns one choice per request, so n must be 1.")
    if _get(request, "logprobs", bool, "a boolean"):
        raise _refuse("logprobs", "Claude does not return token log probabilities.")
    if request.get("top_logprobs") is not None:
        raise _refuse("top_logprobs", "Claude does not return token log probabilities.")
    if _get(request, "logit_bias", dict, "an object"):
        raise _refuse("logit_bias", "Claude does not accept token biases.")
    response_format = _get(request, "response_format", dict, "an object")
    if response_format is not None and response_format.get("type") != "text":
        raise _refuse("response_format", "only the 'text' format is available through this endpoint.")
    if request.get("audio") is not None:
        raise _refuse("audio", "Claude does not produce audio.")
    modalities = _get(request, "modalities", list, "an array")
    if modalities is not None and modalities != ["text"]:
        raise _refuse("modalities", "Claude only produces text.")
    for legacy in ("functions", "function_call"):
        if request.get(legacy) is not None:
            raise _refuse(legacy, "the legacy function-calling parameters are not supported; use 'tools'.")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _get(request, penalty, (int, float), "a number"):
            raise _refuse(penalty, "Claude has no repetition penalties; omit it or set it to 0.")
    for name in ("prediction", "reasoning_effort", "web_search_options", "moderation"):
        if request.get(name) is not None:
            raise _refuse(name, "it has no equivalent in the Anthropic Messages API.")


def _max_tokens(request: dict[str, Any]) -> int:
    # max_completion_tokens replaced max_tokens in OpenAI's API, so it wins when both are sent.
    for name in ("max_completion_tokens", "max_tokens"):
        value = _get(request, name, int, "an integer")
        if value is not None:
            if value < 1:
                raise OpenAIRequestError(f"'{name}' must be at least 1.", name, "invalid_value")
            return int(value)
    return DEFAULT_MAX_TOKENS


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return stop
    raise OpenAIRequestError("'stop' must be a string or an array of strings.", "stop", "invalid_type")


def _tools(request: dict[str, Any], out: dict[str, Any]) -> None:
    """Set Anthropic `tools` and `tool_choice` from tools, tool_choice and parallel_tool_calls."""
    tools = _get(request, "tools", list, "an array") or []
    out_tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(request.get("tool_choice"))
    parallel = _get(request, "parallel_tool_calls", bool, "a boolean")
    if not out_tools:
        # "none" without tools is what a client means by sending no tools; anything else is a mistake.
        if choice is not None and choice["type"] != "none":
            raise OpenAIRequestError(
                "'tool_choice' is only allowed when 'tools' are specified.", "tool_choice", "invalid_value"
            )
        return
    out["tools"] = out_tools
    if parallel is False and (choice is None or choice["type"] != "none"):
        # Anthropic puts this switch on tool_choice, and does not allow it on "none".
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise OpenAIRequestError(f"'{param}' must be an object.", param, "invalid_type")
    if tool.get("type") != "function":
        raise OpenAIRequestError(
            f"'{param}.type' is not supported: only 'function' tools are.", f"{param}.type", "unsupported_value"
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise OpenAIRequestError(f"'{param}.function' must be an object.", f"{param}.function", "invalid_type")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise OpenAIRequestError(f"'{param}.function.name' must be a non-empty string.", f"{param}.function.name")
    schema = function.get("parameters")
    if schema is None:
        # OpenAI allows a function without parameters; Anthropic requires a schema.
        schema = {"type": "object", "properties": {}}
    elif not isinstance(schema, dict):
        raise OpenAIRequestError(
            f"'{param}.function.parameters' must be an object.", f"{param}.function.parameters", "invalid_type"
        )
    out: dict[str, Any] = {"name": name}
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    out["input_schema"] = schema
    # `strict` is dropped, as Anthropic's own OpenAI endpoint does.
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return {"type": _TOOL_CHOICES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
            return {"type": "tool", "name": function["name"]}
        raise OpenAIRequestError(
            "'tool_choice.function.name' must be a non-empty string.", "tool_choice.function.name", "invalid_value"
        )
    raise OpenAIRequestError(
        "'tool_choice' must be 'auto', 'required', 'none' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        "tool_choice",
        "unsupported_value",
    )
