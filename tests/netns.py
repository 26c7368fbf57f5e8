"""Network namespaces for the tests: each a host of its own, joined to the root namespace by a veth
pair on a private /30 (10.x.y.1 on the root side, 10.x.y.2 inside). Processes started in one with
`ip netns exec` see only its loopback and its veth: what they reach of the root namespace (PgBouncer,
and through it Postgres) they reach over the veth, like another machine's network.

Needs root and iproute2's `ip`: without them the tests that use this fail when CI is set and are
skipped otherwise. Namespaces and links are removed when the context ends, failed or not; ones left
by a test process that was killed are removed by the next run."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PREFIX = "mt"
STALE = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")


@dataclass(frozen=True)
class Namespace:
    name: str
    root_link: str
    root_address: str  # the root namespace's end of the veth: where processes inside reach it
    address: str  # the namespace's own end: where the root namespace reaches processes inside

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def available() -> None:
    """Skip (or, in CI, fail) unless namespaces can be made here."""
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root (ip netns add)"
    elif shutil.which("ip") is None:
        reason = "iproute2's `ip` is not installed: `apt-get install -y iproute2`"
    if reason is None:
        probe = f"{PREFIX}{os.getpid()}-probe"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            reason = f"cannot create a network namespace: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[Namespace]]:
    available()
    _remove_stale()
    made: list[Namespace] = []
    try:
        for index, subnet in enumerate(_free_subnets(count)):
            root, inside = (str(host) for host in list(subnet.hosts())[:2])
            space = Namespace(f"{PREFIX}{os.getpid()}-{index}", f"{PREFIX}{os.getpid()}-{index}r", root, inside)
            made.append(space)
            peer = f"{PREFIX}{os.getpid()}-{index}n"
            for argv in (
                ["ip", "netns", "add", space.name],
                ["ip", "link", "add", space.root_link, "type", "veth", "peer", "name", peer],
                ["ip", "link", "set", peer, "netns", space.name],
                ["ip", "addr", "add", f"{root}/30", "dev", space.root_link],
                ["ip", "link", "set", space.root_link, "up"],
                ["ip", "-n", space.name, "addr", "add", f"{inside}/30", "dev", peer],
                ["ip", "-n", space.name, "link", "set", peer, "up"],
                ["ip", "-n", space.name, "link", "set", "lo", "up"],
            ):
                subprocess.run(argv, capture_output=True, text=True, check=True)
        yield made
    finally:
        for space in made:
            _remove(space.name, space.root_link)


def _remove(name: str, root_link: str) -> None:
    # Deleting one end of a veth pair deletes the other; a namespace goes once nothing runs in it.
    subprocess.run(["ip", "link", "del", root_link], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _remove_stale() -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = STALE.match(name)
        if match and not _alive(int(match.group(1))):
            _remove(name, f"{name}r")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """/30s in 10.200.0.0/13 that no interface of the root namespace is on."""
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    taken = [ipaddress.ip_interface(field).network for field in re.findall(r"inet (\S+)", shown)]
    pool = ipaddress.ip_network("10.200.0.0/13")
    chosen: list[ipaddress.IPv4Network] = []
    while len(chosen) < count:
        subnet = ipaddress.ip_network(f"{pool.network_address + random.randrange(0, pool.num_addresses // 4) * 4}/30")
        if not any(subnet.overlaps(other) for other in [*taken, *chosen]):
            chosen.append(subnet)  # type: ignore[arg-type]
    return chosen
