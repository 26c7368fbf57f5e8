"""What a response writes in one turn of the event loop leaves as one write, in order; a close
sends what is held first; nothing is written to a connection already closing; meter's own head
lines go into the next final head."""

from __future__ import annotations

import asyncio

from meter.server import CoalescedWrites


class Connection(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_writes_of_one_turn_go_out_as_one_in_order() -> None:
    connection = Connection()
    writes = CoalescedWrites(connection, asyncio.get_running_loop())
    writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    writes.write(b"{}")
    assert connection.writes == []
    await asyncio.sleep(0)
    assert connection.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    writes.write(b"next")  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert connection.writes[1:] == [b"next"]


async def test_a_close_sends_what_is_held_first_and_later_writes_are_dropped() -> None:
    connection = Connection()
    writes = CoalescedWrites(connection, asyncio.get_running_loop())
    writes.write(b"head")
    writes.write(b"body")
    writes.close()
    assert connection.writes == [b"headbody"] and connection.closed and writes.is_closing()
    writes.write(b"late")
    await asyncio.sleep(0)
    assert connection.writes == [b"headbody"]


async def test_anything_else_is_the_connections_own() -> None:
    connection = Connection()
    writes = CoalescedWrites(connection, asyncio.get_running_loop())
    assert writes.get_extra_info("peername", "none") == "none"


async def test_head_lines_go_into_the_next_final_head_once_before_its_blank_line() -> None:
    connection = Connection()
    writes = CoalescedWrites(connection, asyncio.get_running_loop())
    writes.add_head_lines(b"a: 1\r\nb: 2\r\n")
    writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # an interim answer keeps its head as it is
    writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    writes.write(b"\r\n\r\n")  # a body that looks like the end of a head is a body
    writes.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the next answer's head: the lines were used
    await asyncio.sleep(0)
    assert connection.writes == [
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\na: 1\r\nb: 2\r\n\r\n"
        b"\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n\r\n"
    ]
