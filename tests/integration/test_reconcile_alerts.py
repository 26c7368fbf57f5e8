"""The reconciliation alerts of deploy/prometheus/alerts.yml, evaluated by `promtool test rules` over
series written here: MeterBillingDrift fires for a drift above $0.01 that lasts 15 minutes (either
sign) and not for a smaller or a passing one; MeterReconciliationStale fires a day after the last
success; MeterReconciliationNeverSucceeded fires after a day of failures without a success, and
neither fires where reconciliation is not configured (gauge 0, no errors).

Needs `promtool` (Debian: `apt-get install prometheus`), as test_prometheus.py does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.test_deploy import ALERTS, load_yaml
from tests.integration.test_prometheus import binaries

DRIFT = "meter_reconcile_drift_usd"
LAST = "meter_reconcile_last_success_timestamp_seconds"
ERRORS = "meter_reconcile_errors_total"


def alerts_at(minutes: int, name: str, fired: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "eval_time": f"{minutes}m",
        "alertname": name,
        "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}} for labels in fired],
    }


def run(tmp_path: Path, series: list[dict[str, str]], checks: list[dict[str, Any]]) -> None:
    binaries()  # fails (with CI set) or skips without promtool
    # The rules as shipped, without annotations, which promtool would compare as rendered text:
    # what is tested here is when each alert fires (test_deploy.py checks the annotations).
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    promtool = shutil.which("promtool") or "promtool"
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_billing_drift_fires_after_15_minutes_above_the_threshold(tmp_path: Path) -> None:
    series = [
        # $0.37 too little billed for Opus 4.7 from minute 0 on
        {"series": f'{DRIFT}{{model="claude-opus-4-7",instance="a"}}', "values": "0.37x40"},
        # $0.02 too much billed for Haiku, i.e. a negative drift
        {"series": f'{DRIFT}{{model="claude-haiku-4-5",instance="a"}}', "values": "-0.02x40"},
        # within the threshold
        {"series": f'{DRIFT}{{model="claude-sonnet-4-6",instance="a"}}', "values": "0.005x40"},
        # over it for 10 minutes only, then fixed
        {"series": f'{DRIFT}{{model="other",instance="a"}}', "values": "5x10 0x30"},
    ]
    both = [{"model": "claude-opus-4-7"}, {"model": "claude-haiku-4-5"}]
    run(
        tmp_path,
        series,
        [
            alerts_at(10, "MeterBillingDrift", []),  # pending, not yet firing
            alerts_at(16, "MeterBillingDrift", both),
            alerts_at(30, "MeterBillingDrift", both),
        ],
    )


def test_reconciliation_staleness(tmp_path: Path) -> None:
    day = 24 * 60
    series = [
        # succeeded at minute 0 (Unix time 0 + 60 s, as promtool's clock starts at 0), then never again
        {"series": f'{LAST}{{instance="a"}}', "values": f"60x{day + 60}"},
        {"series": f'{ERRORS}{{instance="a"}}', "values": f"0+1x{day + 60}"},
    ]
    run(
        tmp_path,
        series,
        [
            alerts_at(day - 60, "MeterReconciliationStale", []),
            alerts_at(day + 30, "MeterReconciliationStale", [{}]),
            alerts_at(day + 30, "MeterReconciliationNeverSucceeded", []),
        ],
    )


def test_a_reconciliation_that_never_succeeds(tmp_path: Path) -> None:
    day = 24 * 60
    failing = [
        {"series": f'{LAST}{{instance="leader"}}', "values": f"0x{day + 120}"},
        {"series": f'{ERRORS}{{instance="leader"}}', "values": f"0+1x{day + 120}"},
        {"series": f'{LAST}{{instance="follower"}}', "values": f"0x{day + 120}"},
        {"series": f'{ERRORS}{{instance="follower"}}', "values": f"0x{day + 120}"},
    ]
    run(
        tmp_path,
        failing,
        [
            alerts_at(12 * 60, "MeterReconciliationNeverSucceeded", []),  # failing, but not for a day yet
            alerts_at(day + 90, "MeterReconciliationNeverSucceeded", [{}]),
            alerts_at(day + 90, "MeterReconciliationStale", []),
        ],
    )
    # Not configured: every process exports 0 and counts no errors.
    unconfigured = [
        {"series": f'{LAST}{{instance="a"}}', "values": f"0x{day + 120}"},
        {"series": f'{ERRORS}{{instance="a"}}', "values": f"0x{day + 120}"},
    ]
    run(
        tmp_path,
        unconfigured,
        [
            alerts_at(day + 90, "MeterReconciliationNeverSucceeded", []),
            alerts_at(day + 90, "MeterReconciliationStale", []),
        ],
    )
