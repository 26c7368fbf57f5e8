"""meter past one host: three meter processes in two network namespaces (two "hosts": two processes
in one, one in the other), sharing one Postgres that they reach over their veth links through a real
PgBouncer (transaction pool for everything, a session pool for LISTEN). Limits are exact across the
three, a revocation reaches all three within a second, and a real Prometheus scraping the three
sums their metrics to exactly the traffic sent.

Needs root (ip netns), pgbouncer and prometheus: each missing one skips the tests (fails them in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.test_leases import CHEAP, sampled_while, state
from tests.integration.test_limits import BODY, fire, headers, new_tenant
from tests.integration.test_prometheus import Prometheus, binaries
from tests.netns import Namespace, namespaces
from tests.pgbouncer import PgBouncer, Pool
from tests.support import (
    ADMIN_TOKEN,
    KEY_PEPPER,
    METER,
    OPERATOR_KEY,
    Admin,
    Ledger,
    Process,
    create_database,
    eventually,
    free_port,
    metric,
    wait_for_http,
)

# Hosts: two meter processes on the first, one on the second.
PLACEMENT = (0, 0, 1)


@dataclass
class Hosts:
    meters: list[Process]
    direct_url: str  # the test's own view of the database
    spaces: list[Namespace]


# Starting a meter process on this shared 2-core machine can take a minute when other suites run.
READY_TIMEOUT_S = 180.0


def start_in(space: Namespace, argv: list[str], env: dict[str, str], port: int, ready: str) -> Process:
    log_path = Path(env["METER_DATA_DIR"]) / "process.log"
    try:
        return Process(space.command(*argv), env, f"http://{space.address}:{port}", ready, log_path, READY_TIMEOUT_S)
    except (AssertionError, RuntimeError) as exc:
        raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from exc


@pytest.fixture(scope="module")
def hosts(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    binaries()  # Prometheus is needed too: skip before building anything without it
    with contextlib.ExitStack() as stack:
        spaces = stack.enter_context(namespaces(2))
        name = f"meter_hosts_{os.getpid()}_{secrets.token_hex(3)}"
        direct = create_database(postgres_server, name)
        pools = {"meter": Pool(name, "transaction", 6), "meter_listen": Pool(name, "session", 6)}
        bouncer = PgBouncer(postgres_server, pools, listen=tuple(space.root_address for space in spaces))
        stack.callback(bouncer.stop)
        upstreams: list[str] = []
        for space in spaces:
            port = free_port()
            argv = [*METER, "demo-upstream", "--host", space.address, "--port", str(port), "--api-key", OPERATOR_KEY]
            directory = tmp_path_factory.mktemp("hosts-upstream")
            upstream = start_in(space, argv, {"METER_DATA_DIR": str(directory)}, port, "/_demo/last-request")
            stack.callback(upstream.stop)
            upstreams.append(upstream.base_url)

        def start_meter(index: int, host: int) -> Process:
            space, port, metrics_port = spaces[host], free_port(), free_port()
            env = {
                # Each host reaches PgBouncer at the root namespace's end of its own link.
                "METER_DATABASE_URL": bouncer.url("meter", space.root_address),
                "METER_LISTEN_DATABASE_URL": bouncer.url("meter_listen", space.root_address),
                "METER_DATABASE_TRANSACTION_POOLING": "true",
                "METER_UPSTREAM_URL": upstreams[host],
                "METER_UPSTREAM_API_KEY": OPERATOR_KEY,
                "METER_ADMIN_TOKEN": ADMIN_TOKEN,
                "METER_KEY_PEPPER": KEY_PEPPER,
                "METER_DATA_DIR": str(tmp_path_factory.mktemp(f"hosts-meter{index}")),
                "METER_METRICS_ADDRESS": f"{space.address}:{metrics_port}",
            }
            argv = [*METER, "serve", "--host", space.address, "--port", str(port)]
            meter = start_in(space, argv, env, port, "/readyz")
            meter.metrics_url = f"http://{space.address}:{metrics_port}/metrics"
            return meter

        # All at once, as a deployment rolls out: one of them migrates, the others wait for it.
        with ThreadPoolExecutor(len(PLACEMENT)) as pool:
            starting = [pool.submit(start_meter, index, host) for index, host in enumerate(PLACEMENT)]
        for future in starting:
            if future.exception() is None:
                stack.callback(future.result().stop)
        failed = [future.exception() for future in starting if future.exception() is not None]
        if failed:
            raise RuntimeError(f"{failed[0]}\npgbouncer's log:\n{bouncer.log()}") from failed[0]
        meters = [future.result() for future in starting]
        yield Hosts(meters, direct, spaces)


def test_the_processes_are_on_two_hosts(hosts: Hosts) -> None:
    """Each namespace has only its loopback and its veth; the root namespace's loopback (where the
    test Postgres may listen) is not reachable from it: Postgres is reached through the link."""
    for space in hosts.spaces:
        shown = subprocess.run(space.command("ip", "-4", "-o", "addr"), capture_output=True, text=True, check=True)
        addresses = sorted(line.split()[3] for line in shown.stdout.splitlines())
        assert addresses == sorted(["127.0.0.1/8", f"{space.address}/30"]), addresses
    assert {m.base_url.split(":")[1] for m in hosts.meters} == {f"//{s.address}" for s in hosts.spaces}


def test_limits_are_exact_across_three_processes_on_two_hosts(hosts: Hosts) -> None:
    meters = hosts.meters
    budget, daily_tokens = Decimal("0.05"), 40_000
    key, _ = new_tenant(meters, {"budget_usd_per_month": str(budget), "tokens_per_day": daily_tokens})
    tenant = key["tenant_id"]
    responses, samples = sampled_while(
        hosts.direct_url,
        tenant,
        lambda: [r for _ in range(3) for r in asyncio.run(fire(meters, key, 90, BODY, **CHEAP))],
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, Counter(statuses)
    served_by = {str(r.request.url).rsplit("/v1/", 1)[0] for r in responses if r.status_code == 200}
    assert served_by == {m.base_url for m in meters}, "every process must have served some of the budget"
    assert any(s["month_usd_held"] > 0 for s in samples), "no lease was ever seen"
    for s in samples:
        assert s["month_usd"] + s["month_usd_held"] <= budget, s
        assert s["day_tokens"] + s["day_tokens_held"] <= daily_tokens, s
        assert (s["month_usd_held"], s["day_tokens_held"]) == (s["holds_usd"], s["holds_tokens"]), s

    ledger = Ledger(hosts.direct_url)
    rows = eventually(
        lambda: [found for found in [ledger.rows(tenant_id=tenant, status=200)] if len(found) == statuses.count(200)],
        waiting_for="every served request's ledger row",
    )[0]
    settled = eventually(
        lambda: (s := state(hosts.direct_url, tenant))["month_usd_held"] == 0 and s["in_flight"] == 0 and s,
        waiting_for="every lease to be given back",
    )
    spent = sum(row["cost_usd"] for row in rows)
    assert 0 < spent <= budget and settled["month_usd"] == spent
    assert settled["day_tokens"] == sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"]
        for r in rows
    )


def test_a_revocation_reaches_all_three_within_a_second(hosts: Hosts) -> None:
    key, _ = new_tenant(hosts.meters)
    with httpx.Client(timeout=30) as client:

        def statuses() -> list[int]:
            return [
                client.post(m.base_url + "/v1/messages", json=BODY, headers=headers(key, **CHEAP)).status_code
                for m in hosts.meters
            ]

        assert statuses() == [200, 200, 200]  # every process has the key in its cache
        # Revoked on the second host's process; the other host's two must hear of it too.
        admin = Admin(hosts.meters[2].base_url)
        assert admin.request("POST", f"/admin/keys/{key['id']}/revoke").status_code == 200
        eventually(lambda: statuses() == [401, 401, 401], 1.0, "the revocation on all three processes")


def test_prometheus_sums_the_three_processes_to_the_traffic_sent(hosts: Hosts, tmp_path: Path) -> None:
    meters = hosts.meters
    key, _ = new_tenant(meters)
    tenant = key["tenant_id"]
    sent = [5, 7, 9]
    with httpx.Client(timeout=30) as client:
        for meter, count in zip(meters, sent, strict=True):
            for _ in range(count):
                response = client.post(meter.base_url + "/v1/messages", json=BODY, headers=headers(key, **CHEAP))
                assert response.status_code == 200, response.text
    rows = eventually(
        lambda: [found for found in [Ledger(hosts.direct_url).rows(tenant_id=tenant)] if len(found) == sum(sent)],
        waiting_for="the ledger rows",
    )[0]
    # Each process counts what it served.
    for meter, count in zip(meters, sent, strict=True):
        assert metric(meter.base_url, "meter_requests_total", tenant=tenant) == count
    with prometheus_scraping(meters, tmp_path) as prometheus:

        def total(expr: str) -> float | None:
            result = prometheus.query(expr)
            return float(result[0]["value"][1]) if result else None

        requests = f'sum(meter_requests_total{{tenant="{tenant}"}})'
        assert eventually(lambda: total(requests) == sum(sent), 30, "Prometheus to have scraped all three")
        instances = prometheus.query(f'sum by (instance) (meter_requests_total{{tenant="{tenant}"}})')
        per_instance = {s["metric"]["instance"]: float(s["value"][1]) for s in instances}
        assert sorted(per_instance.values()) == sorted(float(count) for count in sent), per_instance
        output = f'sum(meter_tokens_total{{tenant="{tenant}",kind="output"}})'
        assert total(output) == sum(row["output_tokens"] for row in rows)


@contextlib.contextmanager
def prometheus_scraping(meters: list[Process], directory: Path) -> Iterator[Prometheus]:
    binary, _ = binaries()
    targets = [m.metrics_url.removeprefix("http://").removesuffix("/metrics") for m in meters]
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "meter", "static_configs": [{"targets": targets}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/-/ready", process, timeout_s=30)
            yield Prometheus(f"http://127.0.0.1:{port}", log_path)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
