"""The duplicate-key check (meter/proxy/request.py): its quick key count is never below the true one
and any JSON object without a repeated key passes, whatever its keys and strings hold (quotes,
backslashes, colons) and however it is spaced; a repeated key is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.errors import InvalidRequest
from meter.proxy.request import _keys_in, parse_body

tricky = st.text(alphabet='ab"\\: \n\t{}', max_size=8)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=30,
)


def keys_of(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(keys_of(v) for v in value.values())
    if isinstance(value, list):
        return sum(keys_of(v) for v in value)
    return 0


@settings(max_examples=400)
@given(documents, st.sampled_from([(",", ":"), (", ", ": "), (" , ", " :\t"), (",\n", " \n: ")]))
def test_no_key_is_missed_and_no_unique_key_is_refused(document: Any, separators: tuple[str, str]) -> None:
    text = json.dumps(document, separators=separators).encode()
    assert _keys_in(text) >= keys_of(document)
    assert parse_body(json.dumps({"doc": document}, separators=separators).encode()) == {"doc": document}


def test_a_string_that_starts_with_a_colon_is_not_a_repeated_key() -> None:
    assert parse_body(b'{"content": ":)", "x": {":": ": "}}') == {"content": ":)", "x": {":": ": "}}


@pytest.mark.parametrize(
    "body",
    [b'{"model": "a", "model": "b"}', b'{"a": {"x\\\\": 1, "x\\\\": 2}}', b'{"a\\"": 1, "a\\"" :2}'],
)
def test_a_repeated_key_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="repeats a key"):
        parse_body(body)


def test_an_escaped_quote_before_a_colon_in_a_string_is_not_a_key() -> None:
    assert parse_body(b'{"text": "say \\": now", "n": 1}') == {"text": 'say ": now', "n": 1}
