"""Webhooks from two meter processes sharing one Postgres, to a real receiver over a socket:
budget thresholds arrive once however many processes see them, signatures verify with the
`standardwebhooks` library (an independent implementation of the specification), retries keep
their webhook-id, and the operator API lists webhooks without secrets and audits every change."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from meter.db import migrate
from tests.integration.test_cli import meter_cli
from tests.support import Admin, Ledger, Process, create_database, eventually, sample, start_meter
from tests.webhook_receiver import Received, Receiver, receiver

# Seconds, so that a test sees a day's retry schedule in a second.
# Deliveries run on background loops of two processes: on a busy machine they take a while.
DELIVERY_WAIT_S = 30.0
FAST = {
    "METER_WEBHOOK_CHECK_S": "0.2",
    "METER_WEBHOOK_POLL_S": "0.1",
    "METER_WEBHOOK_RETRY_S": "0.2,0.2,0.2",
    "METER_WEBHOOK_TIMEOUT_S": "2",
    "METER_BATCH_POLL_S": "0.2",
}
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "Hi"}],
}


@pytest.fixture(scope="module")
def database_url(postgres_server: str) -> str:
    """A database of this module's own: any meter process on a database delivers its webhooks, so
    the session's meter (with the day-long default retry schedule) must not share this one's."""
    url = create_database(postgres_server, f"meter_webhooks_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return Ledger(database_url)


@pytest.fixture(scope="module")
def meters(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    processes = [
        start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp(f"wh{i}"), **FAST) for i in range(2)
    ]
    yield processes
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


def new_tenant(admin: Admin, **key: Any) -> dict[str, Any]:
    return admin.issue_key(admin.create_tenant(f"hooked-{secrets.token_hex(3)}")["id"], **key)


def subscribe(admin: Admin, url: str, *event_types: str, **fields: Any) -> dict[str, Any]:
    response = admin.request("POST", "/admin/webhooks", json={"url": url, "event_types": list(event_types), **fields})
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    return webhook


def verified(webhook: dict[str, Any], received: Received) -> dict[str, Any]:
    """The payload, once the Standard Webhooks library accepts its signature."""
    payload: dict[str, Any] = Webhook(webhook["secret"]).verify(received.body, received.headers)
    return payload


def call(meter: Process, key: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": key["key"], "anthropic-version": "2023-06-01", "x-demo-output-tokens": "20"}
    return httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers, timeout=30)


def test_the_80_percent_threshold_arrives_once_from_two_processes(
    meters: list[Process], hooks: Receiver, ledger: Ledger
) -> None:
    admin = Admin(meters[0].base_url)
    # What one call costs, measured on a tenant of its own; the budget is ten of them.
    probe = call(meters[0], new_tenant(admin))
    cost = ledger.row(probe.headers["x-meter-request-id"])["cost_usd"]
    key = new_tenant(admin)
    tenant_id = key["tenant_id"]
    budget = cost * 10
    limits = admin.request("PUT", f"/admin/tenants/{tenant_id}/limits", json={"budget_usd_per_month": str(budget)})
    assert limits.status_code == 200, limits.text
    path = f"/budget-{tenant_id}"
    webhook = subscribe(admin, hooks.base_url + path, "budget.threshold", tenant_id=tenant_id)

    def thresholds(at: str) -> list[int]:
        return [json.loads(r.body)["data"]["threshold_percent"] for r in hooks.received(at)]

    def settled() -> Decimal:
        view = admin.request("GET", f"/admin/tenants/{tenant_id}/limits").json()
        return Decimal(view["this_month"]["cost_usd"])

    # Calls through both processes until 80 % is settled (one may be refused while the previous
    # call's reservation is not settled yet); then traffic goes on, past it.
    for index in range(40):
        if settled() >= budget * Decimal("0.8"):
            break
        call(meters[index % 2], key)
    assert settled() >= budget * Decimal("0.8")
    eventually(lambda: 80 in thresholds(path), timeout_s=DELIVERY_WAIT_S, waiting_for="the 80 % event")
    for index in range(3):
        call(meters[index % 2], key)
    # A webhook made now hears of the same facts at the next check: a check ran after the traffic.
    marker = subscribe(admin, hooks.base_url + path + "-later", "budget.threshold", tenant_id=tenant_id)
    later = "a check after the traffic"
    eventually(lambda: 80 in thresholds(path + "-later"), timeout_s=DELIVERY_WAIT_S, waiting_for=later)

    seen = thresholds(path)
    assert seen.count(80) == 1 and seen.count(50) == 1, seen
    eighty = next(r for r in hooks.received(path) if json.loads(r.body)["data"]["threshold_percent"] == 80)
    payload = verified(webhook, eighty)
    spent = sum(row["cost_usd"] for row in ledger.rows(tenant_id=tenant_id))
    assert payload["type"] == "budget.threshold"
    assert payload["data"] | {"used": None} == {
        "tenant_id": tenant_id,
        "key_id": None,
        "limit": "budget_usd_per_month",
        "unit": "usd",
        "period": "month",
        "period_start": datetime.now(UTC).date().replace(day=1).isoformat(),
        "threshold_percent": 80,
        "limit_value": str(budget.normalize()),
        "used": None,
    }
    assert budget * Decimal("0.8") <= Decimal(payload["data"]["used"]) <= spent
    # A signature of another secret, or over another body, is refused by the same verifier.
    with pytest.raises(WebhookVerificationError):
        verified(marker, eighty)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook["secret"]).verify(eighty.body + b" ", eighty.headers)

    # The two processes together emitted each threshold once per webhook (50 and 80 %, for two webhooks).
    # (A process counts an event just after its row commits, so a delivery can come first: wait for the count.)
    def emitted() -> float:
        return sum(sample(m.metrics_url, "meter_webhook_events_total", type="budget.threshold") or 0 for m in meters)

    expected = len(thresholds(path)) + len(thresholds(path + "-later"))
    eventually(lambda: emitted() >= expected, timeout_s=DELIVERY_WAIT_S, waiting_for="the emissions to be counted")
    assert emitted() == expected


def test_a_receiver_that_fails_twice_gets_the_same_webhook_id_three_times(
    meters: list[Process], hooks: Receiver
) -> None:
    admin = Admin(meters[1].base_url)
    tenant_id = admin.create_tenant(f"expiring-{secrets.token_hex(3)}")["id"]
    path = "/fail-twice"
    webhook = subscribe(admin, hooks.base_url + path, "key.expiring", tenant_id=tenant_id)
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    key = admin.issue_key(tenant_id, name="soon", expires_at=expires.isoformat())

    def attempts() -> list[Received]:
        return [r for r in hooks.received(path) if json.loads(r.body)["data"]["key_id"] == key["id"]]

    eventually(lambda: len(attempts()) >= 3, timeout_s=DELIVERY_WAIT_S, waiting_for="three attempts")
    deliveries = admin.request("GET", f"/admin/webhooks/{webhook['id']}/deliveries").json()["data"]
    delivered = eventually(
        lambda: [
            d
            for d in admin.request("GET", f"/admin/webhooks/{webhook['id']}/deliveries").json()["data"]
            if d["status"] == "delivered"
        ],
        timeout_s=DELIVERY_WAIT_S,
        waiting_for="the delivery to be recorded",
    )
    tries = attempts()
    assert len(tries) == 3
    assert {r.headers["webhook-id"] for r in tries} == {delivered[0]["id"]}
    assert len({r.body for r in tries}) == 1  # the same event, byte for byte
    for received in tries:
        payload = verified(webhook, received)
        assert payload["type"] == "key.expiring"
        assert payload["data"] == {
            "tenant_id": tenant_id,
            "key_id": key["id"],
            "name": "soon",
            "prefix": key["prefix"],
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    assert len(deliveries) == 1
    assert delivered[0]["attempts"] == 3 and delivered[0]["last_status_code"] == 200


def test_a_receiver_that_always_fails_is_given_up_after_the_schedule(meters: list[Process], hooks: Receiver) -> None:
    admin = Admin(meters[0].base_url)
    tenant_id = admin.create_tenant(f"broken-{secrets.token_hex(3)}")["id"]
    webhook = subscribe(admin, hooks.base_url + "/fail", "key.expiring", tenant_id=tenant_id)
    admin.issue_key(tenant_id, expires_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    path = f"/admin/webhooks/{webhook['id']}/deliveries"
    failed = eventually(
        lambda: [d for d in admin.request("GET", path).json()["data"] if d["status"] == "failed"],
        timeout_s=DELIVERY_WAIT_S,
        waiting_for="the delivery to be given up",
    )
    # The first attempt, then one per pause of METER_WEBHOOK_RETRY_S.
    assert failed[0]["attempts"] == 4
    assert failed[0]["last_status_code"] == 500 and failed[0]["next_attempt_at"] is None
    assert len([r for r in hooks.received("/fail") if r.headers["webhook-id"] == failed[0]["id"]]) == 4


@pytest.mark.parametrize(("path", "error"), [("/redirect", "HTTP 307"), ("/drip", "no answer within 2.0 s")])
def test_redirects_are_not_followed_and_a_slow_answer_is_cut_off(
    meters: list[Process], hooks: Receiver, path: str, error: str
) -> None:
    admin = Admin(meters[0].base_url)
    tenant_id = admin.create_tenant(f"hostile-{secrets.token_hex(3)}")["id"]
    webhook = subscribe(admin, hooks.base_url + path, "key.expiring", tenant_id=tenant_id)
    key = admin.issue_key(tenant_id, expires_at=(datetime.now(UTC) + timedelta(days=2)).isoformat())
    deliveries = f"/admin/webhooks/{webhook['id']}/deliveries"
    retried = eventually(
        lambda: [d for d in admin.request("GET", deliveries).json()["data"] if d["attempts"] >= 2],
        timeout_s=DELIVERY_WAIT_S,
        waiting_for="a second attempt",
    )
    assert retried[0]["status"] in ("pending", "failed") and retried[0]["last_error"].startswith(error)
    # Nothing reached the redirect's target.
    assert not [r for r in hooks.received("/ok") if key["id"].encode() in r.body]


def test_batch_ended_once_its_results_are_billed(meters: list[Process], hooks: Receiver, ledger: Ledger) -> None:
    admin = Admin(meters[0].base_url)
    key = new_tenant(admin)
    path = f"/batches-{key['tenant_id']}"
    webhook = subscribe(admin, hooks.base_url + path, "batch.ended", tenant_id=key["tenant_id"])
    item: Any = {"custom_id": "only", "params": BODY}
    with anthropic.Anthropic(base_url=meters[1].base_url, api_key=key["key"], max_retries=0) as client:
        batch = client.messages.batches.create(requests=[item], extra_headers={"x-demo-batch-seconds": "0.3"})
    (received,) = eventually(lambda: hooks.received(path), 30, "batch.ended")
    payload = verified(webhook, received)
    assert payload["type"] == "batch.ended"
    data = payload["data"]
    assert (data["batch_id"], data["tenant_id"], data["key_id"]) == (batch.id, key["tenant_id"], key["id"])
    assert (data["processing_status"], data["billed_results"], data["request_counts"]["succeeded"]) == ("ended", 1, 1)
    # Billed before it was announced.
    assert [row["upstream_request_id"] for row in ledger.rows(tenant_id=key["tenant_id"], endpoint="batches")] == [
        f"{batch.id}/only"
    ]


def test_a_rotation_signs_with_both_secrets_for_its_grace_period(meters: list[Process], hooks: Receiver) -> None:
    admin = Admin(meters[0].base_url)
    tenant_id = admin.create_tenant(f"rotating-{secrets.token_hex(3)}")["id"]
    path = f"/rotating-{tenant_id}"
    first = subscribe(admin, hooks.base_url + path, "key.expiring", tenant_id=tenant_id)

    def rotate(grace_period_s: int) -> dict[str, Any]:
        response = admin.request(
            "POST", f"/admin/webhooks/{first['id']}/rotate", json={"grace_period_s": grace_period_s}
        )
        assert response.status_code == 200, response.text
        rotated: dict[str, Any] = response.json()
        return rotated

    def event_of_a_new_expiring_key() -> Received:
        key = admin.issue_key(tenant_id, expires_at=(datetime.now(UTC) + timedelta(days=5)).isoformat())
        return eventually(
            lambda: next((r for r in hooks.received(path) if key["id"].encode() in r.body), None),
            timeout_s=DELIVERY_WAIT_S,
            waiting_for="key.expiring",
        )

    second = rotate(3600)
    during = event_of_a_new_expiring_key()
    assert verified(first, during) == verified(second, during)  # either secret verifies it
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    third = rotate(0)
    after = event_of_a_new_expiring_key()
    verified(third, after)
    for old in (first, second):
        with pytest.raises(WebhookVerificationError):
            verified(old, after)


def test_credit_low_and_exhausted_once_per_top_up(meters: list[Process], hooks: Receiver) -> None:
    admin = Admin(meters[0].base_url)
    tenant_id = admin.create_tenant(f"prepaid-{secrets.token_hex(3)}")["id"]
    path = f"/credit-{tenant_id}"
    subscribe(admin, hooks.base_url + path, "credit.low", "credit.exhausted", tenant_id=tenant_id, credit_low_usd="0.5")

    def credit(amount: str) -> None:
        response = admin.request("POST", f"/admin/tenants/{tenant_id}/credits", json={"amount_usd": amount})
        assert response.status_code == 200, response.text

    def events() -> list[tuple[str, str]]:
        return [(p["type"], p["data"]["balance_usd"]) for p in (json.loads(r.body) for r in hooks.received(path))]

    credit("1")
    credit("-0.6")  # 0.40: low
    eventually(lambda: ("credit.low", "0.4") in events(), timeout_s=DELIVERY_WAIT_S, waiting_for="credit.low")
    credit("-0.4")  # 0: exhausted; still the same episode for credit.low
    eventually(lambda: ("credit.exhausted", "0") in events(), timeout_s=DELIVERY_WAIT_S, waiting_for="credit.exhausted")
    credit("0.3")  # a top-up that leaves it low starts a new episode
    again = "credit.low after the top-up"
    eventually(lambda: ("credit.low", "0.3") in events(), timeout_s=DELIVERY_WAIT_S, waiting_for=again)
    assert [kind for kind, _ in events()] == ["credit.low", "credit.exhausted", "credit.low"]


def test_operator_api_shows_secrets_once_validates_urls_and_audits(meters: list[Process], hooks: Receiver) -> None:
    admin = Admin(meters[0].base_url)
    created = subscribe(admin, hooks.base_url + "/ok", "batch.ended", description="billing")
    assert created["secret"].startswith("whsec_")
    listed = admin.request("GET", "/admin/webhooks", params={"limit": 1000}).json()["data"]
    mine = [w for w in listed if w["id"] == created["id"]]
    assert mine and "secret" not in mine[0] and mine[0]["credit_low_usd"] == "10.00"
    # Filtered by tenant: its own webhooks and those of every tenant, never another tenant's.
    tenant_id = admin.create_tenant(f"listed-{secrets.token_hex(3)}")["id"]
    own = subscribe(admin, hooks.base_url + "/ok", "key.expiring", tenant_id=tenant_id)
    other = subscribe(admin, hooks.base_url + "/ok", "key.expiring", tenant_id=admin.create_tenant("x")["id"])
    heard = {w["id"] for w in admin.request("GET", "/admin/webhooks", params={"tenant_id": tenant_id}).json()["data"]}
    assert {own["id"], created["id"]} <= heard and other["id"] not in heard
    assert created["secret"] not in admin.request("GET", f"/admin/webhooks/{created['id']}").text
    rotated = admin.request("POST", f"/admin/webhooks/{created['id']}/rotate")
    assert rotated.status_code == 200 and rotated.json()["secret"] not in ("", created["secret"])
    for url in (
        "ftp://example.com/x",
        "http:///nohost",
        "https://user:pw@example.com/",
        "javascript:alert(1)",
        "x",
        "http://\u2603.com/",
        "http://xn--zz.com/",
        "http://example.com:99999/",
        "http://example.com/a b",
        "http://example.com/#frag",
    ):
        refused = admin.request("POST", "/admin/webhooks", json={"url": url, "event_types": ["batch.ended"]})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["error"]["type"] == "invalid_request_error"
    for event_types in ([], ["budget.thresholds"]):
        refused = admin.request("POST", "/admin/webhooks", json={"url": hooks.base_url, "event_types": event_types})
        assert refused.status_code == 400, refused.text
    deleted = admin.request("DELETE", f"/admin/webhooks/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["id"] == created["id"] and "secret" not in deleted.json()
    assert admin.request("GET", f"/admin/webhooks/{created['id']}").status_code == 404
    assert admin.request("DELETE", f"/admin/webhooks/{created['id']}").status_code == 404
    audit = admin.request("GET", "/admin/audit", params={"subject_id": created["id"]}).json()["data"]
    assert [entry["action"] for entry in audit] == ["webhook.create", "webhook.rotate_secret", "webhook.delete"]
    assert all(created["secret"] not in json.dumps(entry) for entry in audit)


def test_the_cli_manages_webhooks_with_the_same_functions(
    meters: list[Process], hooks: Receiver, database_url: str
) -> None:
    admin = Admin(meters[0].base_url)
    tenant_id = admin.create_tenant(f"cli-{secrets.token_hex(3)}")["id"]
    path = f"/cli-{tenant_id}"
    made = meter_cli(
        database_url, "webhooks", "create", hooks.base_url + path, "--event", "key.expiring", "--tenant", tenant_id
    )
    key = admin.issue_key(tenant_id, expires_at=(datetime.now(UTC) + timedelta(days=6)).isoformat())
    (received,) = eventually(lambda: hooks.received(path), timeout_s=DELIVERY_WAIT_S, waiting_for="key.expiring")
    assert verified(made, received)["data"]["key_id"] == key["id"]
    listed = [w for w in meter_cli(database_url, "webhooks", "list") if w["id"] == made["id"]]
    assert listed and "secret" not in listed[0]
    delivered = eventually(
        lambda: [
            d for d in meter_cli(database_url, "webhooks", "deliveries", made["id"]) if d["status"] == "delivered"
        ],
        timeout_s=DELIVERY_WAIT_S,
        waiting_for="the delivery to be recorded",
    )
    assert delivered[0]["id"] == received.headers["webhook-id"]
    assert meter_cli(database_url, "webhooks", "delete", made["id"])["id"] == made["id"]
    audit = admin.request("GET", "/admin/audit", params={"subject_id": made["id"]}).json()["data"]
    assert [(e["action"], e["actor"].startswith("cli:")) for e in audit] == [
        ("webhook.create", True),
        ("webhook.delete", True),
    ]
