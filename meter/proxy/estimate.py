"""The worst case a request can cost, reserved before it is forwarded (and settled exactly after).

Input tokens are estimated from the body without a tokenizer:

- text and JSON structure: one token per 3 bytes of the body, counting the JSON keys and
  punctuation too. Claude's tokenizers average 3.5 to 4 bytes per token on English text and code,
  so this over-reserves there. It under-counts only text denser than 3 bytes per token: digit runs,
  some symbols and non-Latin scripts, where a token can be 1 to 2 bytes; the worst case is about 2x
  (1.5 bytes per token) on the text part of such a body.
- base64 images: 1,600 tokens each, Anthropic's ceiling for an image (it resizes larger ones to
  about 1.15 megapixels), instead of their base64 bytes.
- base64 documents (PDFs): one token per 3 bytes of base64 (a page is about 1,500 to 3,000 tokens
  of text plus its image; this covers that for typical PDFs, but an image-heavy page can cost more).

Output is `max_tokens`, the most the model may produce. Cache writes may cost more than plain
input, so a body that mentions `cache_control` reserves its input at the dearest input price.

So the overspend of a budget is bounded by the estimate's error on input text of the requests in
flight when it runs out, and is zero for typical English text and code.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.pricing import MILLION, Price

BYTES_PER_TOKEN = 3
IMAGE_TOKENS = 1_600


def input_tokens(body: bytes) -> int:
    if b'"base64"' not in body:
        return -(-len(body) // BYTES_PER_TOKEN)
    excluded, images = _base64_payloads(msgspec.json.decode(body))
    return -(-(len(body) - excluded) // BYTES_PER_TOKEN) + images * IMAGE_TOKENS


def _base64_payloads(node: Any) -> tuple[int, int]:
    """(bytes of base64 image data, number of images) anywhere in the request."""
    excluded = images = 0
    if isinstance(node, dict):
        source = node.get("source")
        if node.get("type") == "image" and isinstance(source, dict) and source.get("type") == "base64":
            return len(str(source.get("data", ""))), 1
        for value in node.values():
            more, found = _base64_payloads(value)
            excluded, images = excluded + more, images + found
    elif isinstance(node, list):
        for value in node:
            more, found = _base64_payloads(value)
            excluded, images = excluded + more, images + found
    return excluded, images


def worst_case_usd(price: Price, input_estimate: int, max_tokens: int, caches: bool) -> Any:
    input_price = price.input_per_mtok
    if caches:
        input_price = max(input_price, price.cache_write_5m_per_mtok, price.cache_write_1h_per_mtok)
    return (input_estimate * input_price + max_tokens * price.output_per_mtok) / MILLION
