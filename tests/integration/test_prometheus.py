"""deploy/prometheus and deploy/grafana against a real Prometheus scraping a real meter: promtool
accepts the config and the rules, and after a few seconds of real traffic (JSON and streaming
replies, upstream errors, limit and budget refusals) every dashboard query returns data and every
alert expression evaluates.

Needs the `prometheus` and `promtool` binaries (Debian: `apt-get install prometheus`): without them
the tests fail when CI is set and are skipped otherwise."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import yaml

from tests.integration.test_deploy import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    as_promql,
    dashboard_queries,
    exported_series,
    load_yaml,
    series_names,
)
from tests.support import Admin, Process, eventually, free_port, scrape, wait_for_http

MODEL = "claude-sonnet-4-6"
UNPRICED_MODEL = "claude-unpriced-test-model"
TRAFFIC_S = 12.0
# Series meter declares but never updates (nothing in meter/ increments it yet): panels that
# show only these may be empty. Remove an entry once meter updates it; the test says when.
NOT_YET_EMITTED: set[str] = set()


def binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    message = (
        "the prometheus and promtool binaries are not on PATH: "
        "install them with `apt-get install -y --no-install-recommends prometheus`"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def metrics_target(meter: Process) -> str:
    return meter.metrics_url.removeprefix("http://").removesuffix("/metrics")


def write_config(directory: Path, target: str) -> Path:
    """deploy/prometheus with meter's test process as the only target and 1 s intervals."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "meter"]
    job["static_configs"] = [{"targets": [target]}]
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_CONFIG.parent / rule_file, directory / rule_file)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def promtool(*args: str) -> None:
    _, binary = binaries()
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def test_promtool_accepts_config_and_rules(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    binaries()  # before the fixtures, so that missing binaries fail (or skip) the test itself
    meter: Process = request.getfixturevalue("meter")
    config = write_config(tmp_path, meter.base_url.removeprefix("http://"))
    promtool("check", "config", str(config))
    promtool("check", "config", str(PROMETHEUS_CONFIG))
    promtool("check", "rules", str(ALERTS))


class Prometheus:
    def __init__(self, base_url: str, log_path: Path) -> None:
        self.base_url = base_url
        self.log_path = log_path

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.base_url + path, params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(self.base_url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}\n-> {body.get('errorType')}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def caught_up(self, since: datetime) -> bool:
        """Whether meter was scraped after `since`, and every rule group evaluated after that scrape."""
        (target,) = self.get("/api/v1/targets")["activeTargets"]
        scraped = datetime.fromisoformat(target["lastScrape"])
        groups = self.get("/api/v1/rules")["groups"]
        return scraped > since and all(datetime.fromisoformat(group["lastEvaluation"]) > scraped for group in groups)


@pytest.fixture
def prometheus(meter: Process, tmp_path: Path) -> Iterator[Prometheus]:
    binary, _ = binaries()
    # Scraped where the shipped config scrapes it: the metrics address, which needs no token.
    config = write_config(tmp_path, metrics_target(meter))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
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


def new_key(admin: Admin, limits: dict[str, Any]) -> str:
    tenant = admin.create_tenant(f"prometheus-{free_port()}")
    response = admin.request("PUT", f"/admin/tenants/{tenant['id']}/limits", json=limits)
    assert response.status_code == 200, response.text
    key: str = admin.issue_key(tenant["id"], name="prometheus")["key"]
    return key


def drive_traffic(base_url: str, key: str, limited_key: str, broke_key: str) -> Counter[str]:
    """Every kind of request the dashboards show, repeated for TRAFFIC_S seconds."""
    outcomes: Counter[str] = Counter()
    hello: Any = [{"role": "user", "content": "Hello"}]

    def attempt(label: str, client: anthropic.Anthropic, **kwargs: Any) -> None:
        try:
            if kwargs.pop("stream", False):
                with client.messages.stream(max_tokens=32, messages=hello, **kwargs) as stream:
                    stream.until_done()
            else:
                client.messages.create(max_tokens=32, messages=hello, **kwargs)
            outcomes[f"{label} ok"] += 1
        except anthropic.APIStatusError as error:
            outcomes[f"{label} {error.status_code}"] += 1
        except anthropic.APIError as error:
            outcomes[f"{label} {type(error).__name__}"] += 1

    def client(api_key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)

    with client(key) as tenant, client(limited_key) as limited, client(broke_key) as broke:
        deadline = time.monotonic() + TRAFFIC_S
        for _ in range(1000):  # bounded; the deadline ends it first
            if time.monotonic() > deadline:
                break
            attempt("json", tenant, model=MODEL, extra_headers={"x-demo-cache-read": "100"})
            attempt("stream", tenant, model=MODEL, stream=True)
            attempt("overloaded", tenant, model=MODEL, extra_headers={"x-demo-error": "529"})
            attempt("midstream", tenant, model=MODEL, stream=True, extra_headers={"x-demo-error": "midstream"})
            attempt("unpriced", tenant, model=UNPRICED_MODEL)
            attempt("limited", limited, model=MODEL)
            attempt("broke", broke, model=MODEL)
            time.sleep(0.2)
    return outcomes


def only_unemitted(expr: str) -> bool:
    meter_series = {name for name in series_names(expr) if name.startswith("meter_")}
    return bool(meter_series) and meter_series <= NOT_YET_EMITTED


def finite(result: list[dict[str, Any]]) -> bool:
    values = [series["value"][1] for series in result if "value" in series]
    values += [value for series in result for _, value in series.get("values", [])]
    return any(math.isfinite(float(value)) for value in values)


def test_every_query_returns_data_from_real_traffic(request: pytest.FixtureRequest) -> None:
    binaries()  # before the fixtures, so that missing binaries fail (or skip) the test itself
    meter: Process = request.getfixturevalue("meter")
    admin: Admin = request.getfixturevalue("admin")
    tenant_key: dict[str, Any] = request.getfixturevalue("tenant_key")
    prometheus: Prometheus = request.getfixturevalue("prometheus")
    limited_key = new_key(admin, {"requests_per_minute": 1})
    broke_key = new_key(admin, {"budget_usd_per_day": "0"})
    prepaid = admin.create_tenant("prepaid")  # for the credit balance panel
    assert admin.request("POST", f"/admin/tenants/{prepaid['id']}/credits", json={"amount_usd": "5"}).status_code == 200
    # The keys are new: meter reads them, limits included, at their first request.
    outcomes = drive_traffic(meter.base_url, tenant_key["key"], limited_key, broke_key)
    assert outcomes["json ok"] and outcomes["stream ok"] and outcomes["unpriced ok"], outcomes
    assert outcomes["overloaded 529"] and outcomes["limited 429"] and outcomes["broke 429"], outcomes
    ended = datetime.now(UTC)
    eventually(lambda: prometheus.caught_up(ended), 30, "a scrape and a rule evaluation after the traffic")
    # Keeps NOT_YET_EMITTED honest: once meter updates one of these, its panels must show data.
    assert exported_series().keys() >= NOT_YET_EMITTED
    exposition = scrape(meter.base_url)
    now_emitted = {name for name in NOT_YET_EMITTED if f"\n{name}{{" in exposition or f"\n{name} " in exposition}
    assert not now_emitted, f"meter now emits {now_emitted}: remove them from NOT_YET_EMITTED"

    (target,) = prometheus.get("/api/v1/targets")["activeTargets"]
    assert target["health"] == "up", f"{target}\n{prometheus.log()}"
    assert target["scrapeUrl"] == meter.metrics_url
    tenants = prometheus.get("/api/v1/label/tenant/values", **{"match[]": "meter_requests_total"})
    assert tenants, "the billing dashboard's tenant variable would be empty"

    empty = []
    for dashboard, title, grafana_expr in dashboard_queries():
        expr = as_promql(grafana_expr)
        assert "$" not in expr, f"{dashboard}: {title}: a Grafana variable is left in {expr}"
        result = prometheus.query(expr)
        if not finite(result) and not only_unemitted(expr):
            empty.append(f"{dashboard}: {title}: {expr} -> {result}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    for rule in alert_rules():
        prometheus.query(rule["expr"])
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert rules.keys() == {rule["alert"] for rule in alert_rules()}
    broken = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert not broken, broken
    # Budget refusals happened, no ledger row was dropped, meter was scraped.
    assert rules["MeterTenantOverBudget"]["state"] == "firing"
    assert rules["MeterLedgerRowsDropped"]["state"] == "inactive"
    assert rules["MeterTargetDown"]["state"] == "inactive"
