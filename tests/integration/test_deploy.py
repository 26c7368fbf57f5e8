"""deploy/, the Dockerfile and .dockerignore, checked without Docker, a cluster or the network:
every file parses, the compose file and the Kubernetes manifests hang together, meter's commands
and settings in them are ones meter accepts, and every PromQL query names only metrics meter
exports (test_prometheus.py runs the same queries against a real Prometheus)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import meter.cli
from meter.metrics import Metrics
from meter.settings import ENV_FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
METER_SERVICES = ("meter-1", "meter-2")
METER_PORT = 8080
METRICS_PORT = 9464
# Paths meter serves for probes (meter/app.py).
LIVENESS, READINESS = "/healthz", "/readyz"
# Series Prometheus makes itself, allowed in queries beside meter's own.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# What Grafana puts in place of its variables when test_prometheus.py runs the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m", "$tenant": ".*"}


# --- loading ------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE)
    return document


def kubernetes_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return documents


def kubernetes(kind: str) -> list[dict[str, Any]]:
    return [d for d in kubernetes_documents() if d["kind"] == kind]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too; rows themselves are left out."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr as Grafana has it) of every panel query."""
    return [
        (name, panel["title"], target["expr"])
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def as_promql(expr: str) -> str:
    """A Grafana query with its variables replaced, as Prometheus can run it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- PromQL -------------------------------------------------------------------------------------


def exported_series() -> dict[str, set[str]]:
    """Every series name meter exports, with its label names, read from a fresh Metrics."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for collector in vars(metrics).values():
        # A labelled metric exports nothing until it has a child: make one of each.
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*("x" for _ in collector._labelnames))
    return {sample.name: set(sample.labels) for family in registry.collect() for sample in family.samples}


_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (function names, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS and not re.fullmatch(r"[eE]\d*", name)}


def matcher_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it is matched on) of every `name{...}` selector."""
    text = _STRING.sub('""', expr)
    return [(name, set(_MATCHER.findall(matchers))) for name, matchers in _SELECTOR.findall(text)]


def grouping_labels(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    return {label.strip() for group in _GROUPING.findall(text) for label in group.split(",") if label.strip()}


def test_promql_parsing_helpers() -> None:
    expr = 'sum by (tenant, kind) (rate(meter_tokens_total{tenant=~"a{b}"}[30s])) / on() group_left vector(1)'
    assert series_names(expr) == {"meter_tokens_total"}
    assert matcher_labels(expr) == [("meter_tokens_total", {"tenant"})]
    assert grouping_labels(expr) == {"tenant", "kind"}
    assert series_names('up{job="meter"} == 0 and x_total > 1e3') == {"up", "x_total"}


def every_query() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard and alert query."""
    queries = [(f"{name}: {title}", as_promql(expr)) for name, title, expr in dashboard_queries()]
    queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return queries


def test_queries_use_only_series_meter_exports() -> None:
    exported = exported_series()
    known = {**exported, **PROMETHEUS_SERIES}
    assert "meter_requests_total" in exported and "meter_request_duration_seconds_bucket" in exported
    problems = []
    for where, expr in every_query():
        names = series_names(expr)
        if not names:
            problems.append(f"{where}: selects no series: {expr}")
        problems += [f"{where}: {name} is not exported by meter" for name in sorted(names - known.keys())]
        for name, labels in matcher_labels(expr):
            if name in known and not name.endswith("_info") and labels - known[name] - TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
        labels_in_expr = set().union(*(known.get(name, set()) for name in names)) | TARGET_LABELS
        if not any(name.endswith("_info") for name in names) and grouping_labels(expr) - labels_in_expr:
            problems.append(f"{where}: groups by unknown label {sorted(grouping_labels(expr) - labels_in_expr)}")
    assert not problems, "\n".join(problems)


# --- every file parses --------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    paths = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(paths) >= 11
    for path in paths:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


# --- compose ------------------------------------------------------------------------------------


_VARIABLE = re.compile(r"\$(\{[^}]*\}|[A-Za-z_]\w*|\$)")


def test_compose_variables_all_have_defaults() -> None:
    """`docker compose up` works with no environment set: every ${VAR} has a :- default."""
    text = COMPOSE.read_text()
    found = _VARIABLE.findall(text)
    assert found
    for reference in found:
        assert reference != "$", "no $$ escapes expected"
        assert re.fullmatch(r"\{[A-Z_][A-Z0-9_]*:-[^}]+\}", reference), f"${reference} needs a default (${{VAR:-x}})"


def resolve_defaults(value: str) -> str:
    return re.sub(r"\$\{[A-Z_][A-Z0-9_]*:-([^}]+)\}", r"\1", value)


def test_compose_services_images_and_builds() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", *METER_SERVICES, "demo-upstream", "prometheus", "grafana"} <= services.keys()
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["postgres"]["healthcheck"]["test"]
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, f"{name} builds from {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        elif ":" in service["image"]:
            assert not service["image"].endswith(":latest"), f"{name}: pin the image version"
    meter_services = ["migrate", "demo-upstream", *METER_SERVICES]
    assert {services[name]["image"] for name in meter_services} == {"meter:local"}
    assert all("build" in services[name] for name in meter_services)


def parses_as_meter_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail unless meter's own CLI accepts argv; nothing is run."""

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise Parsed(original(self, args, namespace))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        with pytest.raises(Parsed):
            meter.cli.main(argv)


def test_compose_commands_are_meter_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["demo-upstream"]["command"][0] == "demo-upstream"
    for name in ("migrate", "demo-upstream", *METER_SERVICES):
        parses_as_meter_command(services[name]["command"], monkeypatch)


def meter_environment(variables: dict[str, Any]) -> dict[str, str]:
    return {name: resolve_defaults(str(value)) for name, value in variables.items()}


def assert_meter_settings(env: dict[str, str], where: str) -> Settings:
    unknown = {name for name in env if name.startswith("METER_")} - {f"METER_{f.upper()}" for f in ENV_FIELDS}
    assert not unknown, f"{where}: meter reads no {sorted(unknown)}"
    return Settings.from_env(env)


def test_compose_meter_environment() -> None:
    services = compose()["services"]
    postgres_env = services["postgres"]["environment"]
    demo_port = services["demo-upstream"]["command"][services["demo-upstream"]["command"].index("--port") + 1]
    for name in ("migrate", *METER_SERVICES):
        env = meter_environment(services[name]["environment"])
        settings = assert_meter_settings(env, name)
        assert settings.database_url == (
            f"postgresql://{postgres_env['POSTGRES_USER']}:{resolve_defaults(postgres_env['POSTGRES_PASSWORD'])}"
            f"@postgres:5432/{postgres_env['POSTGRES_DB']}"
        )
        assert settings.upstream_url == f"http://demo-upstream:{demo_port}"
        assert settings.upstream_api_key and settings.admin_token
        assert settings.host == "0.0.0.0" and settings.port == METER_PORT
    depends = services["migrate"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    for name in METER_SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_compose_depends_on_existing_services() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", [])) <= services.keys() - {name}, name


def test_compose_mounts_exist() -> None:
    document = compose()
    named = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists(), f"{name} mounts {source}, missing from the repository"
                assert path.is_relative_to(ROOT), f"{name} mounts {source}, outside the repository"
            else:
                assert source in named, f"{name} uses volume {source}, not declared"


def host_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    ports = []
    for port in service.get("ports", []):
        parts = str(port).split("/")[0].split(":")
        assert len(parts) == 3, f"publish {port} on an explicit address"
        ports.append((parts[0], int(parts[1])))
    return ports


def test_compose_ports_are_unique_and_local() -> None:
    services = compose()["services"]
    published = [port for service in services.values() for port in host_ports(service)]
    assert len(published) == len(set(published)), published
    assert all(address == "127.0.0.1" for address, _ in published)
    assert [port for name in METER_SERVICES for _, port in host_ports(services[name])] == [8080, 8081]
    for name in METER_SERVICES:
        assert all(str(p).endswith(f":{METER_PORT}") for p in services[name]["ports"])


# --- Prometheus and Grafana provisioning --------------------------------------------------------


def mount_target(service: dict[str, Any], source: str) -> str:
    for volume in service["volumes"]:
        parts = volume.split(":")
        if (COMPOSE.parent / parts[0]).resolve() == (COMPOSE.parent / source).resolve():
            target: str = parts[1]
            return target
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_config_scrapes_every_meter() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "meter"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"{name}:{METRICS_PORT}" for name in METER_SERVICES]
    for name in METER_SERVICES:  # the port Prometheus scrapes is the one meter serves /metrics on
        settings = assert_meter_settings(meter_environment(compose()["services"][name]["environment"]), name)
        assert settings.metrics_host_port() == ("0.0.0.0", METRICS_PORT)
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS_CONFIG.parent / config["rule_files"][0]).resolve() == ALERTS
    prometheus = compose()["services"]["prometheus"]
    directory = mount_target(prometheus, "./prometheus")
    assert f"--config.file={directory}/prometheus.yml" in prometheus["command"]


def test_grafana_provisioning_matches_compose() -> None:
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "meter.yml")["providers"]
    assert provider["type"] == "file"
    grafana = compose()["services"]["grafana"]
    assert provider["options"]["path"] == mount_target(grafana, "./grafana/dashboards")
    assert mount_target(grafana, "./grafana/provisioning") == "/etc/grafana/provisioning"
    env = meter_environment(grafana["environment"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# --- dashboards ---------------------------------------------------------------------------------


def test_dashboards_are_grafana_dashboards() -> None:
    found = dashboards()
    assert {"meter-operations.json", "meter-billing.json"} <= found.keys()
    assert len({d["uid"] for d in found.values()}) == len(found)
    for name, dashboard in found.items():
        assert 36 <= dashboard["schemaVersion"] <= 41, name
        assert dashboard["title"] and dashboard["uid"], name
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(dashboard):
            where = f"{name}: {panel['title']}"
            assert panel["type"] in ("timeseries", "stat", "table", "gauge", "bargauge"), where
            grid = panel["gridPos"]
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
            assert panel["targets"], where
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target["datasource"]["uid"] == "prometheus", where


def test_operations_dashboard_covers_meter() -> None:
    exprs = " ".join(expr for name, _, expr in dashboard_queries() if name == "meter-operations.json")
    for series in (
        "meter_requests_total",
        "meter_request_duration_seconds_bucket",
        "meter_time_to_first_token_seconds_bucket",
        "meter_in_flight_requests",
        "meter_upstream_errors_total",
        "meter_ledger_queue_depth",
        "meter_ledger_write_seconds_bucket",
        "meter_ledger_rows_written_total",
        "meter_ledger_rows_dropped_total",
        "meter_db_round_trips_total",
        "meter_limit_rejections_total",
    ):
        assert series in exprs, series
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(meter_request_duration_seconds_bucket" in exprs


def test_billing_dashboard_filters_by_tenant() -> None:
    billing = dashboards()["meter-billing.json"]
    (variable,) = billing["templating"]["list"]
    assert variable["name"] == "tenant" and variable["includeAll"] and variable["allValue"] == ".*"
    assert variable["query"]["query"] == variable["definition"] == "label_values(meter_requests_total, tenant)"
    assert variable["datasource"]["uid"] == "prometheus"
    exported = exported_series()
    queries = [expr for name, _, expr in dashboard_queries() if name == "meter-billing.json"]
    assert any(expr.startswith("topk(10,") for expr in queries)
    for expr in queries:
        tenanted = [name for name, _ in matcher_labels(expr) if "tenant" in exported.get(name, ())]
        for name in series_names(expr):
            if "tenant" in exported.get(name, ()):
                assert name in tenanted and 'tenant=~"$tenant"' in expr, expr


# --- alerts -------------------------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    exprs = " ".join(rule["expr"] for rule in rules)
    for needed in (
        "increase(meter_ledger_rows_dropped_total",
        "meter_ledger_queue_depth",
        "meter_upstream_errors_total",
        'meter_limit_rejections_total{reason=~"budget.*|credit"}',
        "histogram_quantile(0.99, sum by (le) (rate(meter_request_duration_seconds_bucket[5m])))",
    ):
        assert needed in exprs, needed
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


# --- Kubernetes ---------------------------------------------------------------------------------


def test_kubernetes_documents_are_named_and_namespace_free() -> None:
    documents = kubernetes_documents()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(["ConfigMap", "Secret", "Job", "Deployment", "Service", "HorizontalPodAutoscaler"])
    for document in documents:
        assert document["apiVersion"] and document["metadata"]["name"], document
        assert "namespace" not in document["metadata"], document["metadata"]["name"]
    (hpa,) = kubernetes("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"


def meter_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = pod_spec["containers"]
    return container


def test_kubernetes_environment_is_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    (config,) = kubernetes("ConfigMap")
    (secret,) = kubernetes("Secret")
    assert {"METER_DATABASE_URL", "METER_UPSTREAM_API_KEY", "METER_ADMIN_TOKEN"} <= secret["stringData"].keys()
    assert "METER_UPSTREAM_URL" in config["data"]
    assert all(isinstance(value, str) for value in config["data"].values()), "ConfigMap values must be strings"
    (deployment,) = kubernetes("Deployment")
    (job,) = kubernetes("Job")
    for workload in (deployment, job):
        container = meter_container(workload["spec"]["template"]["spec"])
        refs = container["envFrom"]
        assert {ref["configMapRef"]["name"] for ref in refs if "configMapRef" in ref} == {config["metadata"]["name"]}
        assert {ref["secretRef"]["name"] for ref in refs if "secretRef" in ref} == {secret["metadata"]["name"]}
        env = {**config["data"], **secret["stringData"], **{e["name"]: e["value"] for e in container.get("env", [])}}
        settings = assert_meter_settings(env, workload["metadata"]["name"])
        assert settings.database_url and settings.upstream_api_key and settings.admin_token
        parses_as_meter_command(container["args"], monkeypatch)
    assert meter_container(job["spec"]["template"]["spec"])["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_kubernetes_deployment_probes_ports_and_shutdown() -> None:
    (deployment,) = kubernetes("Deployment")
    (config,) = kubernetes("ConfigMap")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    container = meter_container(pod["spec"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["METER_HOST"] == "0.0.0.0"
    assert container["args"] == ["serve"]
    ports = {port["name"]: port for port in container["ports"]}
    port = ports["http"]
    assert port["containerPort"] == int(config["data"].get("METER_PORT", METER_PORT)) == METER_PORT
    metrics_address = Settings.from_env(config["data"]).metrics_host_port()
    assert ports["metrics"]["containerPort"] == metrics_address[1] == METRICS_PORT
    for probe, path in (("livenessProbe", LIVENESS), ("readinessProbe", READINESS)):
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert check["port"] in (port["containerPort"], port.get("name")), probe
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    grace = float(config["data"].get("METER_SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 40 > grace + float(pre_stop[-1])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_kubernetes_service_and_hpa_target_the_deployment() -> None:
    (deployment,) = kubernetes("Deployment")
    (service,) = kubernetes("Service")
    (hpa,) = kubernetes("HorizontalPodAutoscaler")
    container = meter_container(deployment["spec"]["template"]["spec"])
    container_port = {port["name"]: port for port in container["ports"]}["http"]
    # Only the tenants' port: the metrics port stays off the Service, reachable by pod only.
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] in (container_port["containerPort"], container_port.get("name"))
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_a_non_root_meter_image() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert stages and all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [json.loads(args) for op, args in final if op == "ENTRYPOINT"] == [["meter"]]
    assert [json.loads(args) for op, args in final if op == "CMD"] == [["serve"]]
    assert [args for op, args in final if op == "EXPOSE"] == [str(METER_PORT)]
    assert any("pip install" in args for op, args in instructions if op == "RUN")


def test_dockerfile_copies_only_what_the_context_has() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    for op, args in dockerfile_instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"


def test_readme_meter_commands_are_meter_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "README.md").read_text()
    commands = re.findall(r"exec meter-\d meter (.+)", text)
    assert commands
    for command in commands:
        parses_as_meter_command(shlex.split(re.sub(r"<[^>]+>", "x", command)), monkeypatch)
