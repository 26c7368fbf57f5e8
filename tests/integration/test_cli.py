"""The operator's command line, and the README's first command: `meter serve --demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.support import ADMIN_TOKEN, KEY_PEPPER, Ledger, Process, eventually, free_port, wait_for_http


def meter_cli(database_url: str, *args: str) -> Any:
    """Run an operator command and parse its JSON output."""
    return json.loads(meter_text(database_url, *args, "--format", "json"))


def meter_text(database_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "meter", *args],
        env={**os.environ, "METER_DATABASE_URL": database_url, "METER_KEY_PEPPER": KEY_PEPPER},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tenants_create_and_keys_issue_and_revoke(database_url: str, meter: Process, ledger: Ledger) -> None:
    tenant = meter_cli(database_url, "tenants", "create", "cli-tenant")
    key = meter_cli(database_url, "keys", "issue", tenant["id"], "--name", "laptop")
    assert key["key"].startswith("sk-meter-") and key["name"] == "laptop"
    with anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert ledger.row(raw.headers["x-meter-request-id"])["tenant_id"] == tenant["id"]
        assert meter_cli(database_url, "keys", "revoke", key["id"])["status"] == "revoked"
        with pytest.raises(anthropic.AuthenticationError):  # the revocation reached meter by NOTIFY
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )


def test_unknown_tenant_is_a_clear_error(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meter", "keys", "issue", "ten_nope"],
        env={**os.environ, "METER_DATABASE_URL": database_url, "METER_KEY_PEPPER": KEY_PEPPER},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "No tenant with id 'ten_nope'" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meter", "serve"],
        env={**os.environ, "METER_UPSTREAM_URL": "ftp://nope", "METER_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "meter: configuration error: METER_UPSTREAM_URL must be an http(s) URL, got 'ftp://nope'"
    ]


def test_serve_demo_with_embedded_postgres(tmp_path: Path) -> None:
    """The README's first command, on a machine with no database server configured."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "meter", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/readyz", process, timeout_s=120)
        except RuntimeError as exc:
            raise AssertionError((tmp_path / "serve.log").read_text()[-4000:]) from exc
        printed = (tmp_path / "serve.log").read_text()
        key = re.search(r"Demo tenant key: (\S+)", printed)
        assert key, printed
        assert "curl http://127.0.0.1" in printed and "anthropic.Anthropic(" in printed
        with anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key.group(1), max_retries=0) as client:
            reply = client.messages.create(
                model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "Hello"}]
            )
        assert reply.usage.output_tokens > 0
        token = (tmp_path / "data" / "admin_token").read_text().strip()

        def usage_events() -> list[dict[str, Any]]:
            response = httpx.get(
                f"http://127.0.0.1:{port}/admin/usage/events", headers={"authorization": f"Bearer {token}"}
            )
            events: list[dict[str, Any]] = response.json()["data"]
            return events

        events = eventually(usage_events, waiting_for="the demo request's ledger row")
        assert events[0]["output_tokens"] == reply.usage.output_tokens
    finally:
        process.send_signal(signal.SIGTERM)
        stopped = process.wait(60)
        log.close()
    assert stopped == 0, (tmp_path / "serve.log").read_text()[-4000:]
    # The embedded Postgres was stopped with meter, and its data stays for the next start.
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


def test_operator_commands_in_every_format(database_url: str, meter: Process, ledger: Ledger) -> None:
    import csv
    import io
    from datetime import UTC, datetime

    tenant = meter_cli(database_url, "tenants", "create", "formats-co")
    key = meter_cli(database_url, "keys", "issue", tenant["id"], "--allowed-model", "claude-haiku-4-5")
    with anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0) as client:
        made = [
            client.messages.with_raw_response.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            ).headers["x-meter-request-id"]
            for _ in range(3)
        ]
    total = sum(ledger.row(request_id)["cost_usd"] for request_id in made)

    listed = meter_cli(database_url, "tenants", "list")
    assert tenant["id"] in {t["id"] for t in listed}
    table = meter_text(database_url, "tenants", "list")
    header, rule = table.splitlines()[:2]
    assert header.split() == ["id", "name", "status", "created_at"] and set(rule.replace(" ", "")) == {"-"}
    rows = list(csv.DictReader(io.StringIO(meter_text(database_url, "keys", "list", tenant["id"], "--format", "csv"))))
    assert [row["id"] for row in rows] == [key["id"]] and "key" not in rows[0]
    assert rows[0]["allowed_models"] == '["claude-haiku-4-5"]'

    by_model = meter_cli(database_url, "usage", tenant["id"], "--group-by", "model")
    assert [(line["group"], line["requests"]) for line in by_model["data"]] == [("claude-haiku-4-5", 3)]
    usage_csv = list(
        csv.DictReader(
            io.StringIO(meter_text(database_url, "usage", tenant["id"], "--group-by", "key", "--format", "csv"))
        )
    )
    assert usage_csv[0]["key"] == key["id"] and Decimal(usage_csv[0]["cost_usd"]) == total
    assert "by day" in meter_text(database_url, "usage", tenant["id"])

    month = datetime.now(UTC).strftime("%Y-%m")
    statement = meter_cli(database_url, "statement", tenant["id"], "--month", month)
    assert Decimal(statement["total_usd"]) == total
    lines = list(
        csv.DictReader(
            io.StringIO(meter_text(database_url, "statement", tenant["id"], "--month", month, "--format", "csv"))
        )
    )
    assert lines[-1]["model"] == "TOTAL" and Decimal(lines[-1]["cost_usd"]) == total
    assert f"Total: ${statement['total_usd']}" in meter_text(database_url, "statement", tenant["id"], "--month", month)

    rotated = meter_cli(database_url, "keys", "rotate", key["id"], "--grace-period", "0")
    assert rotated["key"] != key["key"]
    assert meter_cli(database_url, "tenants", "suspend", tenant["id"])["status"] == "suspended"
    with (
        anthropic.Anthropic(base_url=meter.base_url, api_key=rotated["key"], max_retries=0) as client,
        pytest.raises(anthropic.PermissionDeniedError),
    ):
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert meter_cli(database_url, "tenants", "reactivate", tenant["id"])["status"] == "active"
    audit = httpx.get(
        meter.base_url + "/admin/audit",
        params={"subject_id": tenant["id"]},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()["data"]
    assert [e["action"] for e in audit] == ["tenant.create", "tenant.suspend", "tenant.reactivate"]
    assert all(e["actor"].startswith("cli:") for e in audit)
