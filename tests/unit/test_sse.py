"""The SSE usage reader against a recorded Anthropic stream, split at every possible byte."""

from __future__ import annotations

import math

import pytest

from meter.proxy.stream_usage import BYTES_PER_TOKEN, DELTA_ENVELOPE_BYTES, StreamUsageReader

# A stream in Anthropic's exact format (shared/anthropic-protocol.md section 3), with thinking,
# text, tool use, a ping, a multi-byte character, and cumulative message_delta usage.
RECORDED = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-6","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    b'{"input_tokens":19,"cache_creation_input_tokens":1324,"cache_read_input_tokens":2048,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":300,"ephemeral_1h_input_tokens":1024},'
    b'"output_tokens":1,"service_tier":"standard"}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Caf\xc3\xa9?"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1",'
    b'"name":"get_weather","input":{}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"city\\": \\"Par"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},'
    b'"usage":{"output_tokens":40}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"input_tokens":19,"cache_creation_input_tokens":1324,"cache_read_input_tokens":2048,"output_tokens":87}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def read(*chunks: bytes) -> StreamUsageReader:
    reader = StreamUsageReader()
    for chunk in chunks:
        reader.feed(chunk)
    return reader


def assert_final(reader: StreamUsageReader) -> None:
    usage, partial = reader.final_usage()
    assert partial is False
    assert (usage.input_tokens, usage.output_tokens) == (19, 87)  # the last message_delta wins
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (1324, 2048)
    assert usage.cache_write_split() == (300, 1024)  # the split comes from message_start
    assert reader.stop_reason == "tool_use"
    assert reader.model == "claude-sonnet-4-6"
    assert reader.saw_stop and reader.error_type is None


def test_whole_stream() -> None:
    assert_final(read(RECORDED))


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"])
def test_every_split_point_with_every_line_ending(line_end: bytes) -> None:
    stream = RECORDED.replace(b"\n", line_end)
    for cut in range(len(stream) + 1):
        assert_final(read(stream[:cut], stream[cut:]))


def test_every_split_point_lf() -> None:
    for cut in range(len(RECORDED) + 1):
        assert_final(read(RECORDED[:cut], RECORDED[cut:]))


def test_one_byte_at_a_time_crlf() -> None:
    stream = RECORDED.replace(b"\n", b"\r\n")
    assert_final(read(*(stream[i : i + 1] for i in range(len(stream)))))


def test_three_way_splits_around_line_ends() -> None:
    stream = RECORDED.replace(b"\n", b"\r\n")
    ends = [i for i, byte in enumerate(stream) if byte in b"\r\n"]
    for first in ends[:40]:
        for second in ends[-40:]:
            assert_final(read(stream[: first + 1], stream[first + 1 : second], stream[second:]))


def test_comments_unknown_events_and_fields_are_ignored() -> None:
    noisy = (
        b": keep-alive comment\n\n"
        + RECORDED.replace(b"event: ping\n", b"id: 7\nretry: 1000\nevent: ping\n")
        + b'event: future_event\ndata: {"type":"future_event","usage":{"output_tokens":999}}\n\n'
    )
    noisy = noisy.replace(b"event: content_block_stop\n", b": comment inside\nevent: content_block_stop\n")
    assert_final(read(noisy))


def test_data_without_space_and_event_without_name() -> None:
    stream = RECORDED.replace(b"data: ", b"data:")
    assert_final(read(stream))
    # No event lines at all: the type field inside data decides.
    nameless = b"".join(line + b"\n" for line in RECORDED.split(b"\n") if not line.startswith(b"event:"))
    assert_final(read(nameless))


def test_error_event_before_message_delta_is_partial_with_a_floor_on_output() -> None:
    cut = RECORDED.index(b"event: message_delta")
    stream = RECORDED[:cut] + (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    reader = read(stream)
    usage, partial = reader.final_usage()
    assert partial is True
    assert reader.error_type == "overloaded_error"
    assert usage.input_tokens == 19 and usage.cache_read_input_tokens == 2048
    # Estimated from what the client received: its deltas' bytes past their JSON envelope, 4 per token,
    # and never below one token per delta (never the placeholder of 1, never 0).
    deltas = [line[6:] for line in stream.split(b"\n") if line.startswith(b'data: {"type":"content_block_delta"')]
    content = sum(len(data) for data in deltas) - DELTA_ENVELOPE_BYTES * len(deltas)
    assert usage.output_tokens == max(len(deltas), math.ceil(max(0, content) / BYTES_PER_TOKEN)) >= 2


def test_a_stream_cut_after_long_deltas_is_estimated_from_their_text_not_their_count() -> None:
    start = RECORDED[: RECORDED.index(b"event: content_block_start")]
    word = "token "  # 6 bytes
    deltas = b"".join(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"' + (word * 700).encode() + b'"}}\n\n'
        for _ in range(50)
    )
    usage, partial = read(start + deltas).final_usage()
    assert partial and usage.output_tokens >= 50 * 700 * len(word) // BYTES_PER_TOKEN - 50 * DELTA_ENVELOPE_BYTES


def test_stream_cut_mid_event_is_partial() -> None:
    cut = RECORDED.index(b"event: message_delta") + 30
    _, partial = read(RECORDED[:cut]).final_usage()
    assert partial is True


def test_garbage_data_does_not_raise() -> None:
    reader = read(b"event: message_start\ndata: {oops\n\nevent: message_delta\ndata: [1,2]\n\n" + RECORDED)
    assert_final(reader)
