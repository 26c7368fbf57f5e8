"""A billing exporter follows GET /admin/usage/events by its next_cursor while a slow stream is open
and fast traffic flows around it, through two meter processes: it sees every row exactly once,
the slow stream's too, although that row commits long after rows of calls that started later."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.faults.traffic import SlowStream, Traffic, tenant_headers
from tests.support import Admin, Ledger, Process, eventually, start_meter


class Follower:
    """Polls the feed from where it left off, as an exporter would, until stopped."""

    def __init__(self, admin: Admin, tenant_id: str) -> None:
        self.seen: list[str] = []
        self.cursor: str | None = None
        self._admin, self._tenant_id = admin, tenant_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow)
        self._thread.start()

    def poll(self) -> bool:
        """One page; True if there may be more right away."""
        params = {"tenant_id": self._tenant_id, "limit": 5, **({"after": self.cursor} if self.cursor else {})}
        page = self._admin.request("GET", "/admin/usage/events", params=params).json()
        self.seen += [event["request_id"] for event in page["data"]]
        self.cursor = page["next_cursor"]
        return bool(page["has_more"])

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_feed_follower_sees_every_row_exactly_once(
    meter: Process, admin: Admin, database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    other = start_meter(database_url, upstream.base_url, tmp_path)
    try:
        tenant_id, headers = tenant_headers(admin)
        follower = Follower(admin, tenant_id)
        slow = SlowStream(meter.base_url, headers, {"x-demo-output-tokens": "60", "x-demo-tokens-per-second": "20"})
        traffic = [Traffic(base_url, headers, clients=2).start() for base_url in (meter.base_url, other.base_url)]
        try:
            eventually(lambda: len(follower.seen) >= 40, 60, "rows of the fast calls in the feed")
            slow.join()
        finally:
            for flow in traffic:
                flow.stop()
        eventually(lambda: slow.request_id in follower.seen, 30, "the slow stream's row in the feed")
        follower.stop()
    finally:
        other.stop()
    assert b"message_stop" in slow.received
    # Everything written, then read to the end of the feed.
    answered = {slow.request_id}.union(*(flow.answered for flow in traffic))
    eventually(lambda: answered <= {row["request_id"] for row in ledger.rows(tenant_id=tenant_id)}, 15, "all rows")
    while follower.poll():
        pass
    stored = [row["request_id"] for row in ledger.rows(tenant_id=tenant_id)]
    assert sorted(follower.seen) == sorted(stored)  # every row, none twice
    # The slow stream's id is older than the fast calls' (ids are time-ordered) but it came later in
    # the feed: a cursor on request ids would have passed it for good.
    position = follower.seen.index(slow.request_id)
    assert position >= 40 and any(request_id > slow.request_id for request_id in follower.seen[:position])
