"""A lease's local bookkeeping (meter/proxy/leases.py): what requests take and give back."""

from __future__ import annotations

from decimal import Decimal as D

from meter.proxy.leases import Lease, Need


def granted(tokens: int, usd: str, requests: float, slots: int) -> Lease:
    lease = Lease("lease_x", ("ten_a", "key_b"))
    lease.grant(Need(tokens, D(usd), slots, requests))
    return lease


def test_a_request_takes_its_bound_and_gives_back_what_it_did_not_use() -> None:
    lease = granted(1000, "0.10", 10, 4)
    need = Need(300, D("0.03"), 1)
    assert lease.covers(need)
    lease.take(need, 0.0)
    assert (lease.tokens, lease.usd, lease.requests, lease.slots, lease.running) == (700, D("0.07"), 9, 3, 1)
    lease.finish(need, 120, D("0.012"))
    # The bound's unused part and the slot come back; the request (per-minute) and the use do not.
    assert (lease.tokens, lease.usd, lease.requests, lease.slots, lease.running) == (880, D("0.088"), 9, 4, 0)


def test_a_lease_covers_a_request_only_in_every_dimension() -> None:
    lease = granted(1000, "0.10", 1, 0)
    assert not lease.covers(Need(10, D("0.001"), 1))  # no concurrency slot left
    assert lease.covers(Need(10, D("0.001"), 0))
    assert not lease.covers(Need(10, D("0.2"), 0))
    assert not lease.covers(Need(1001, D(0), 0))


def test_low_when_any_dimension_falls_below_a_quarter_of_the_grant() -> None:
    each_alone = (Need(751, D(0), 0, 0.0), Need(0, D("0.751"), 0, 0.0), Need(0, D(0), 0, 76.0), Need(0, D(0), 7, 0.0))
    for dimension in each_alone:
        lease = granted(1000, "1", 100, 8)
        lease.take(Need(750, D("0.75"), 6, 75.0), 0.0)
        assert not lease.low()  # a quarter of each is left: not below it
        lease.finish(Need(750, D("0.75"), 6, 75.0), 750, D("0.75"))
        lease.take(dimension, 0.0)
        assert lease.low(), dimension


def test_what_is_unused_never_counts_an_overrun_as_negative() -> None:
    lease = granted(100, "0.01", 1, 1)
    need = Need(100, D("0.01"), 1)
    lease.take(need, 0.0)
    lease.finish(need, 150, D("0.02"))  # used more than its bound (the documented input estimate)
    assert lease.tokens == -50 and lease.unused()["tokens"] == 0 and lease.unused()["usd"] == 0
    assert lease.unused()["slots"] == 1
