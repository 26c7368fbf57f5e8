"""Ids: unique, time-ordered, and a forked child never repeats its parent's random digits."""

from __future__ import annotations

import os

from meter.credentials import new_id


def test_ids_are_unique_and_sortable_by_time() -> None:
    ids = [new_id("req") for _ in range(5000)]  # several refills of the random pool
    assert len(set(ids)) == len(ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)
    assert all(len(i) == len("req_") + 28 and int(i[4:], 16) >= 0 for i in ids)


def test_a_forked_child_draws_random_digits_of_its_own() -> None:
    new_id("req")  # the pool is filled, part used
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, new_id("req")[-16:].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    assert len(theirs) == 16 and theirs != new_id("req")[-16:]
