"""Reading a batch creation body, `{"requests": [{"custom_id": ..., "params": {...}}, ...]}`, request by
request from its spool file: up to 256 MB is never held in memory whole, only one request at a
time. Each request is then parsed like a Messages body (meter/proxy/request.py: one JSON object
every parser reads alike)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

from meter.errors import InvalidRequest
from meter.proxy.request import parse_body

CHUNK_BYTES = 1024 * 1024
# Outside strings: the bytes that open or close a value or separate elements; inside: quote, escape.
_STRUCTURE = re.compile(rb'["{}\[\],]')
_IN_STRING = re.compile(rb'["\\]')
_PREFIX = re.compile(rb'\s*\{\s*"requests"\s*:\s*\[\s*')
_SUFFIX = re.compile(rb"\s*\}\s*")


def requests_of(spool: IO[bytes]) -> Iterator[tuple[dict[str, Any], int]]:
    """Each request object of the batch body in `spool`, in order, parsed, with its size in bytes;
    InvalidRequest if the body is not `{"requests": [...]}` with objects inside. The spool is
    rewound at the end."""
    yield from ((parse_body(raw), len(raw)) for raw in _elements(spool))
    spool.seek(0)


def _elements(spool: IO[bytes]) -> Iterator[bytes]:
    """The raw bytes of each element of the list, checking that there is nothing else between them
    than whitespace and commas (so that what meter checks is exactly what the upstream reads)."""
    spool.seek(0)
    buffer = spool.read(CHUNK_BYTES)
    while len(buffer) < 64 and (more := spool.read(CHUNK_BYTES)):
        buffer += more
    prefix = _PREFIX.match(buffer)
    if prefix is None:
        raise InvalidRequest('The request body must be {"requests": [...]}, a list of batch requests.')
    # `start`: where the current element (or the gap before it) begins; `after_comma`: a comma was last.
    position, start, depth, in_string, elements, after_comma = prefix.end(), prefix.end(), 0, False, 0, False
    while True:
        found = (_IN_STRING if in_string else _STRUCTURE).search(buffer, position)
        if found is None:
            more = spool.read(CHUNK_BYTES)
            if not more:
                raise InvalidRequest("The request body ends inside the list of batch requests.")
            buffer, position, start = buffer[start:] + more, position - start, 0
            continue
        char, position = buffer[found.start() : found.start() + 1], found.end()
        if in_string:
            if char == b"\\":
                position += 1  # the escaped byte, whatever it is
            else:
                in_string = False
            continue
        if depth > 0:
            if char == b'"':
                in_string = True
            elif char in b"{[":
                depth += 1
            elif char in b"}]":
                depth -= 1
                if depth == 0:
                    yield buffer[start:position]
                    elements, after_comma, start = elements + 1, False, position
            continue
        gap = buffer[start : found.start()]
        if gap.strip():
            raise InvalidRequest("Each batch request must be a JSON object.")
        if char == b"{" and (elements == 0 or after_comma):
            depth, start = 1, found.start()
        elif char == b"," and elements and not after_comma:
            after_comma, start = True, position
        elif char == b"]" and not after_comma:
            _end(buffer[position:] + spool.read())
            return
        else:
            raise InvalidRequest("Each batch request must be a JSON object, the requests separated by commas.")


def _end(rest: bytes) -> None:
    if not _SUFFIX.fullmatch(rest):
        raise InvalidRequest('The request body must be {"requests": [...]} and nothing else.')
