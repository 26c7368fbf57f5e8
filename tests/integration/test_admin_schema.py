"""The operator API against its own OpenAPI schema: schemathesis generates requests for every admin
route and checks that none gets a 500 and every answer matches the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support import ADMIN_TOKEN, Process


def test_admin_routes_follow_their_schema(meter: Process, tmp_path: Path) -> None:
    """schemathesis's own runner (its pytest plugin does not load under this pytest)."""
    # OPTIONS is answered (204, with Allow) on purpose: probe the other undeclared methods only.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[phases.coverage]\nunexpected-methods = ["get", "put", "post", "delete", "patch", "trace"]\n')
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            meter.base_url + "/schema/openapi.json",
            "--include-path-regex",
            "^/admin/",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples",
            "25",
            "--seed",
            "7",
            # Generated ids name no tenant, so a "valid" request may rightly get 404.
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "examples,coverage,fuzzing",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout or " passed" in done.stdout, done.stdout[-3000:]


def test_every_admin_route_is_documented_and_guarded(meter: Process, tenant_key: dict[str, Any]) -> None:
    spec = httpx.get(meter.base_url + "/schema/openapi.json").json()
    operations = [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        if path.startswith("/admin/")
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 17
    for method, path in operations:
        operation = spec["paths"][path][method.lower()]
        assert {"200", "201"} & set(operation["responses"]), (method, path)
        assert {"400", "401", "404"} <= set(operation["responses"]), (method, path)
        url = meter.base_url + path.replace("{tenant_id}", tenant_key["tenant_id"]).replace(
            "{key_id}", tenant_key["id"]
        )
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": f"Bearer {tenant_key['key']}"},
            {"x-api-key": tenant_key["key"]},
        ):
            response = httpx.request(method, url, headers=headers, json={}, params={"month": "2026-01"})
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["type"] == "authentication_error"
