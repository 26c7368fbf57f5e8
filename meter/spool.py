"""The ledger's local spool: every ledger row, and every request start, is appended to a file of this
process under `METER_DATA_DIR/spool` before the response completes, so that what a killed process
answered is still billed. The ledger writer moves rows on to Postgres and the spool forgets them.

    spool/<name>.lock          held (flock) while the process lives: a live spool is never replayed
    spool/<name>.<n>.log       segments: one JSON record a line, appended with one write() each

A record is a `start` (the row the request gets if it never finishes: partial, at its estimate,
with the settlement of its hold) or a `row` (the request's real row). A segment is rotated past
`segment_bytes`; the starts still open are copied into the new one, so an old segment can go as
soon as every row in it is in Postgres. When nothing is open or unwritten the segment is
truncated. A write reaches the page cache, which survives a process kill; the fsync policy
(`off`, `interval`, `always`) is for machine crashes.

On start (and every few seconds, for the siblings of `--workers N`) a process takes the lock of
every spool whose process is gone, and reads it back (`adopt_dead`): its rows, and for each start
without a row, that start's partial row. Rows are idempotent on request_id, so a row read back that
Postgres already had is skipped, with its settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from meter.db.rows import LedgerRow, Settlement
from meter.metrics import Metrics

log = logging.getLogger("meter.spool")

# After a failed append, the spool refuses new requests this long before it tries again.
BROKEN_S = 1.0


class Record(msgspec.Struct, array_like=True):
    kind: Literal["start", "row"]
    row: LedgerRow
    settlement: Settlement | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode
QUARANTINE_FILE = "quarantine.jsonl"


def spooled_text(row: LedgerRow, settlement: Settlement | None) -> str:
    """A row as the spool writes it: how a quarantined row is kept, and can be replayed from."""
    return _encode(Record("row", row, settlement)).decode()


@dataclass(eq=False)
class Claim:
    """Files whose rows are on their way to Postgres; deleted once the last of them is written.
    A segment of this process (`sealed` when it is no longer appended to), or a dead process's
    whole spool (sealed from the start, with the lock it holds)."""

    paths: list[Path]
    spool: Spool
    unwritten: int = 0
    size: int = 0
    sealed: bool = False
    # A dead process's spool: its lock, held until its rows are written.
    lock: Path | None = None
    lock_fd: int | None = None

    def written(self, rows: int = 1) -> None:
        self.unwritten -= rows
        self.spool.release(self)


@dataclass
class Adopted:
    """A dead process's spool, read back: its rows, in the order they were spooled."""

    entries: list[tuple[LedgerRow, Settlement | None]] = field(default_factory=list)
    unfinished: int = 0


class Spool:
    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        segment_bytes: int = 1024 * 1024,
        max_bytes: int = 1024 * 1024 * 1024,
        fsync: str = "off",
        fsync_interval_s: float = 0.01,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._fsync_interval_s = fsync_interval_s
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock_fd: int | None = None
        self._fd = -1
        self._number = 0
        self._current: Claim | None = None
        self._claims: set[Claim] = set()
        # Starts of requests still in flight: request id -> the encoded record, copied on rotation.
        self._open: dict[str, bytes] = {}
        self._broken_until = 0.0
        self._dirty = False

    # Lifecycle

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Locked before it has its name, so no other process can ever see it unlocked.
        temporary = self.directory / f".{self.name}.lock"
        self._lock_fd = os.open(temporary, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(temporary, self.directory / f"{self.name}.lock")
        self._new_segment()

    def close(self) -> None:
        """Stop appending. Segments with rows still unwritten stay for the next start to replay;
        with none, the spool is removed."""
        if self._current is not None:
            # Starts still open (requests that never finished) keep it, for the next start to bill.
            self._current.sealed = not self._open
            self.release(self._current)
            self._current = None
        if self._fd >= 0:
            self._sync_now()
            os.close(self._fd)
            self._fd = -1
        kept = [claim for claim in self._claims if claim.lock_fd is None]
        if not kept and self._lock_fd is not None:
            (self.directory / f"{self.name}.lock").unlink(missing_ok=True)
        elif kept:
            log.error(
                "spool: %d rows not in Postgres and %d unfinished requests stay in %s for the next start",
                self.unwritten,
                len(self._open),
                self.directory,
            )
        for claim in list(self._claims):
            if claim.lock_fd is not None:
                os.close(claim.lock_fd)  # a dead spool not drained: the next start reads it again
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def unwritten(self) -> int:
        return sum(claim.unwritten for claim in self._claims)

    @property
    def size(self) -> int:
        return sum(claim.size for claim in self._claims)

    def accepting(self, now: float) -> bool:
        """False while the spool is full or its disk refused the last append."""
        return now >= self._broken_until and self.size < self._max_bytes

    # The hot path: one write() per record

    def start(self, row: LedgerRow, settlement: Settlement | None, now: float) -> bool:
        """Note a request that is about to be forwarded, with the row it gets if it never finishes.
        False if it could not be written (the request should then be refused)."""
        line = _encode(Record("start", row, settlement)) + b"\n"
        if self._append(line, now) is None:
            return False
        self._open[row.request_id] = line
        return True

    def finish(self, row: LedgerRow, settlement: Settlement | None, now: float) -> Claim | None:
        """Spool a finished request's row; the claim to mark written once it is in Postgres. None
        if it could not be written (the row then lives in memory only)."""
        self._open.pop(row.request_id, None)
        claim = self._append(_encode(Record("row", row, settlement)) + b"\n", now)
        if claim is not None:
            claim.unwritten += 1
        return claim

    def _append(self, line: bytes, now: float) -> Claim | None:
        claim = self._current
        if claim is None:
            return None
        if claim.size >= self._segment_bytes and not self._rotate(now):
            return None
        claim = self._current
        assert claim is not None
        if not self._write(line, now):
            return None
        if self._fsync == "always":
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._broken(exc, now)
                return None
        else:
            self._dirty = True
        return claim

    def _write(self, line: bytes, now: float) -> bool:
        claim = self._current
        assert claim is not None
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
        except OSError as exc:
            # Cut a torn record off, so the next append starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, claim.size)
                os.lseek(self._fd, claim.size, os.SEEK_SET)
            self._broken(exc, now)
            return False
        claim.size += len(line)
        self._metrics.spool_bytes.inc(len(line))
        return True

    def _broken(self, exc: OSError, now: float) -> None:
        if now >= self._broken_until:
            log.error("spool: append to %s failed (%s); refusing new requests for a while", self.directory, exc)
        self._metrics.spool_write_errors.inc()
        self._broken_until = now + BROKEN_S

    def _new_segment(self) -> None:
        self._number += 1
        path = self.directory / f"{self.name}.{self._number:08d}.log"
        self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._current = Claim([path], self)
        self._claims.add(self._current)

    def _rotate(self, now: float) -> bool:
        """A new segment, holding the starts still open; the old one goes once its rows are written."""
        old, old_fd = self._current, self._fd
        assert old is not None
        try:
            self._new_segment()
        except OSError as exc:
            self._broken(exc, now)
            return False
        self._sync(old_fd)
        os.close(old_fd)
        # The old segment goes only if every open start made it into the new one.
        old.sealed = all(self._write(line, now) for line in list(self._open.values()))
        self.release(old)
        return True

    def release(self, claim: Claim) -> None:
        """Forget the files of a claim that holds nothing unwritten any more."""
        if claim.unwritten > 0:
            return
        if not claim.sealed:
            if claim is self._current and not self._open and claim.size:
                self._truncate(claim)
            return
        for path in claim.paths:
            path.unlink(missing_ok=True)
        if claim.lock is not None and claim.lock_fd is not None:
            claim.lock.unlink(missing_ok=True)
            os.close(claim.lock_fd)
            claim.lock_fd = None
        self._metrics.spool_bytes.dec(claim.size)
        self._claims.discard(claim)

    def _truncate(self, claim: Claim) -> None:
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            return
        self._metrics.spool_bytes.dec(claim.size)
        claim.size = 0

    def quarantine(self, record: str, reason: str) -> bool:
        """Keep a row Postgres rejected in the quarantine file, for the operator: False if it cannot."""
        line = msgspec.json.encode({"record": record, "error": reason}) + b"\n"
        try:
            fd = os.open(self.directory / QUARANTINE_FILE, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    # fsync

    def _sync(self, fd: int) -> None:
        if self._fsync != "off":
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def _sync_now(self) -> None:
        self._dirty = False
        self._sync(self._fd)

    async def sync_periodically(self) -> None:
        """The `interval` policy: one fsync for everything appended in the last interval, in a
        thread, so the event loop never waits for the disk."""
        if self._fsync != "interval":
            return
        while True:
            await asyncio.sleep(self._fsync_interval_s)
            if self._dirty and self._fd >= 0:
                self._dirty = False
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.fsync, self._fd)

    # Replay

    def adopt_dead(self) -> list[tuple[Adopted, Claim]]:
        """Lock and read back every spool in the directory whose process is gone."""
        found = []
        for lock in sorted(self.directory.glob("*.lock")):
            if lock.name.startswith(".") or lock.stem == self.name:
                continue
            claim = self._lock(lock)
            if claim is None:
                continue
            adopted = read_back(claim.paths)
            claim.unwritten = len(adopted.entries)
            claim.size = sum(path.stat().st_size for path in claim.paths)
            self._metrics.spool_bytes.inc(claim.size)
            self._claims.add(claim)
            self._metrics.spool_replayed.labels("row").inc(len(adopted.entries) - adopted.unfinished)
            self._metrics.spool_replayed.labels("unfinished").inc(adopted.unfinished)
            log.warning(
                "spool: read back %d rows (%d of requests that never finished) of dead process %s",
                len(adopted.entries),
                adopted.unfinished,
                lock.stem,
            )
            found.append((adopted, claim))
            self.release(claim)
        return found

    def _lock(self, lock: Path) -> Claim | None:
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError  # another process replayed and removed it meanwhile
        except BlockingIOError:
            os.close(fd)
            return None
        return Claim(sorted(self.directory.glob(f"{lock.stem}.*.log")), self, sealed=True, lock=lock, lock_fd=fd)


def read_back(paths: list[Path]) -> Adopted:
    """A dead spool's rows: every row record, and the start of each request that has none."""
    rows: dict[str, tuple[LedgerRow, Settlement | None]] = {}
    starts: dict[str, tuple[LedgerRow, Settlement | None]] = {}
    for path in paths:
        with open(path, "rb") as spooled:
            for number, line in enumerate(spooled, 1):
                try:
                    record = _decode(line)
                except msgspec.DecodeError:
                    # Only the last line of a killed process can be torn: say so, and go on.
                    log.warning("spool: %s line %d is not a whole record; skipped", path.name, number)
                    continue
                entry = (record.row, record.settlement)
                if record.kind == "row":
                    rows[record.row.request_id] = entry
                else:
                    starts.setdefault(record.row.request_id, entry)
    unfinished = [entry for request_id, entry in starts.items() if request_id not in rows]
    return Adopted([*rows.values(), *unfinished], len(unfinished))
