"""Admission in one process, before a request's body is read and whatever its tenant's limits say:
a bound on requests in flight in this process (past it, 529 at once: the SDKs retry), a bound per
tenant (so one tenant cannot hold the shared upstream pool with slow uploads or abandoned streams),
and a bound per tenant on streams still read after their client left (proxy/relay.py).

These are process-local counters, no round trip: the operator's `max_concurrent_requests` is the
limit across processes (proxy/limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from meter.errors import Overloaded, RateLimited
from meter.metrics import Metrics


class Gate:
    def __init__(self, metrics: Metrics, max_in_flight: int, tenant_max_in_flight: int, tenant_max_drains: int) -> None:
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._tenant_max_in_flight = tenant_max_in_flight
        self._tenant_max_drains = tenant_max_drains
        self.in_flight = 0
        self._by_tenant: dict[str, int] = {}
        self._drains: dict[str, int] = {}

    @property
    def full(self) -> bool:
        return self.in_flight >= self._max_in_flight

    def enter(self, tenant_id: str) -> None:
        """Take a slot for a request of `tenant_id`, or raise the error it gets; `leave` gives it back."""
        if self.full:
            raise overloaded()
        held = self._by_tenant.get(tenant_id, 0)
        if held >= self._tenant_max_in_flight:
            self._metrics.limit_rejections.labels("tenant_in_flight").inc()
            raise RateLimited(
                f"This organization already has {held} requests in flight on this server, the most it may.",
                {"retry-after": "1"},
            )
        self.in_flight += 1
        self._by_tenant[tenant_id] = held + 1

    def leave(self, tenant_id: str) -> None:
        self.in_flight -= 1
        _decrement(self._by_tenant, tenant_id)

    def start_drain(self, tenant_id: str) -> bool:
        """May a stream of `tenant_id` whose client left be read on for its usage? `end_drain` after."""
        held = self._drains.get(tenant_id, 0)
        if held >= self._tenant_max_drains:
            return False
        self._drains[tenant_id] = held + 1
        return True

    def end_drain(self, tenant_id: str) -> None:
        _decrement(self._drains, tenant_id)

    def drain_permit(self, tenant_id: str) -> DrainPermit:
        return DrainPermit(self, tenant_id)


@dataclass
class DrainPermit:
    """One stream's claim on its tenant's drains: taken when its client leaves, released at the end."""

    gate: Gate
    tenant_id: str
    held: bool = False

    def take(self) -> bool:
        self.held = self.held or self.gate.start_drain(self.tenant_id)
        return self.held

    def release(self) -> None:
        if self.held:
            self.gate.end_drain(self.tenant_id)
            self.held = False


def overloaded() -> Overloaded:
    return Overloaded("meter is serving as many requests as it can; try again shortly.", {"retry-after": "1"})


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]  # the dict holds only tenants with something in flight
