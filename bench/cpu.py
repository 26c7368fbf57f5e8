"""How much of the machine's CPU other processes took during a measurement.

On a shared 2-core machine, another job's test run can double a p99; the report says how busy the
machine was with work that is not the benchmark's, so a reader can tell a slow meter from a busy
machine. "The benchmark" is this process and its descendants (meter, the demo upstream, wrk, hey,
LiteLLM) plus the embedded Postgres, whose server detaches from us when it starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, in clock ticks (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    # guest time is already inside user time: count the first eight fields only.
    total = sum(fields[:8])
    return total - idle, total


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks of the process and of its children it has reaped)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]))
    return table


@dataclass
class Window:
    """The result of one measured interval: the share (0-1) of all cores that other processes used."""

    other_share: float = 0.0


class CpuAccount:
    def __init__(self, *roots: int) -> None:
        """The CPU of `roots` and their descendants; by default, of this process and its own."""
        self.roots = set(roots) or {os.getpid()}

    def add_root(self, pid: int) -> None:
        """Count `pid` and its descendants as the benchmark's own (the detached Postgres server)."""
        self.roots.add(pid)

    def ticks(self) -> int:
        """CPU time, in clock ticks, that the roots and their descendants have used so far."""
        return self._ours()

    def _ours(self) -> int:
        table = _processes()
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        total, stack = 0, [pid for pid in self.roots if pid in table]
        while stack:
            pid = stack.pop()
            total += table[pid][1]
            stack.extend(children.get(pid, ()))
        return total

    @contextmanager
    def window(self) -> Iterator[Window]:
        result = Window()
        busy, total, ours = *_machine_jiffies(), self._ours()
        try:
            yield result
        finally:
            time.sleep(0.01)  # let the kernel's counters catch up with a child that just exited
            busy_after, total_after = _machine_jiffies()
            ours_after = self._ours()
            elapsed = total_after - total
            if elapsed > 0:
                result.other_share = max(0.0, (busy_after - busy) - (ours_after - ours)) / elapsed
