"""The spool's files on a real disk: segments rotate and go once their rows are written, a dead
process's spool is read back (its rows, and a partial row for each start that never finished,
past a torn last line), and a live process's spool is never touched."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry

from meter.metrics import Metrics
from meter.spool import Spool, spooled_text
from tests.integration.test_ledger import synthetic_row


def new_spool(directory: Path, segment_bytes: int = 1 << 20) -> Spool:
    spool = Spool(directory, Metrics(CollectorRegistry()), segment_bytes)
    spool.open()
    return spool


def die(spool: Spool) -> None:
    """What kill -9 leaves: the files as they are, the lock released by the kernel."""
    assert spool._lock_fd is not None
    os.close(spool._lock_fd)
    os.close(spool._fd)


def test_segments_rotate_and_go_once_their_rows_are_written(tmp_path: Path) -> None:
    spool = new_spool(tmp_path, segment_bytes=4096)
    open_start = synthetic_row(partial=True)
    assert spool.start(open_start, None, 0.0)
    claims = [spool.finish(synthetic_row(), None, 0.0) for _ in range(40)]
    assert all(claims) and len({id(claim) for claim in claims}) > 3  # rotated several times
    assert len(list(tmp_path.glob("*.log"))) > 3
    for claim in claims:
        assert claim is not None
        claim.written()
    # Only the current segment is left, holding the start still open (copied on each rotation).
    (segment,) = tmp_path.glob("*.log")
    assert open_start.request_id in segment.read_text()
    spool.finish(open_start, None, 0.0).written()  # type: ignore[union-attr]
    (segment,) = tmp_path.glob("*.log")
    assert segment.stat().st_size == 0  # nothing open, nothing unwritten: truncated
    spool.close()
    assert not list(tmp_path.iterdir())


def test_a_dead_spool_is_read_back_once_and_a_live_one_never(tmp_path: Path) -> None:
    dead, live = new_spool(tmp_path), new_spool(tmp_path)
    finished, unfinished = synthetic_row(), synthetic_row(partial=True, error_type="interrupted")
    dead.start(finished, None, 0.0)
    dead.finish(finished, None, 0.0)
    dead.start(unfinished, None, 0.0)
    live.finish(synthetic_row(), None, 0.0)
    die(dead)
    with open(next(tmp_path.glob(f"{dead.name}.*.log")), "ab") as torn:
        torn.write(b'["row",{"request_id":"req_torn"')  # the kill came mid-append
    replayer = new_spool(tmp_path)
    (adopted, claim), *others = replayer.adopt_dead()
    assert not others  # the live spool is locked: not read
    assert [row for row, _ in adopted.entries] == [finished, unfinished] and adopted.unfinished == 1
    assert replayer.adopt_dead() == []  # held by the replayer until written: not read twice
    claim.written(len(adopted.entries))
    assert not list(tmp_path.glob(f"{dead.name}*"))  # written: the dead spool is gone
    live.close()
    replayer.close()


def test_a_quarantined_record_replays_as_docs_durability_says(tmp_path: Path) -> None:
    """docs/durability.md: a quarantined `record`, its settlement nulled, in `replay-0.1.log` next to
    an empty `replay-0.lock`, is read back like a dead process's spool."""
    row = synthetic_row()
    record = msgspec.json.decode(spooled_text(row, None))
    record[2] = None
    (tmp_path / "replay-0.1.log").write_bytes(msgspec.json.encode(record) + b"\n")
    (tmp_path / "replay-0.lock").touch()
    replayer = new_spool(tmp_path)
    ((adopted, _),) = replayer.adopt_dead()
    assert adopted.entries == [(row, None)]
    replayer.close()
