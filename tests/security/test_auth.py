"""Authentication under attack: what a stolen copy of the database holds (keyed hashes, no secret),
keys from before the pepper (still working, re-hashed on first use), a flood of made-up keys (each
looked up once, then the address is throttled while known keys keep working). The throttle counts
per client address, so these tests connect from addresses of their own on the loopback network."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from meter.credentials import KeyHasher, legacy_hash
from tests.security.checks import anthropic_error
from tests.support import KEY_PEPPER, Admin, Process, metric

BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
# METER_AUTH_FAILURES_PER_MINUTE of the guarded meter (tests/security/conftest.py).
FAILURES_ALLOWED = 3


def sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def stored_hashes(database_url: str, key_id: str) -> tuple[str, str | None]:
    (row,) = sql(database_url, "SELECT key_hash, previous_key_hash FROM api_keys WHERE id = $1", key_id)
    return row["key_hash"], row["previous_key_hash"]


@pytest.fixture
def client_from_own_address() -> Iterator[httpx.Client]:
    """A client whose peer address (127.x.y.z) no other test uses."""
    address = f"127.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        yield client


def call(client: httpx.Client, meter: Process, key: str) -> httpx.Response:
    return client.post(
        meter.base_url + "/v1/messages", json=BODY, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
    )


def test_the_database_holds_keyed_hashes_never_a_key(database_url: str, tenant_key: dict[str, Any]) -> None:
    secret = tenant_key["key"]
    key_hash, _ = stored_hashes(database_url, tenant_key["id"])
    assert key_hash == KeyHasher(KEY_PEPPER).hash(secret)
    # Without the pepper, the stored hash cannot even confirm a guessed key.
    assert key_hash != legacy_hash(secret)
    assert key_hash != KeyHasher("another-pepper-0123456789abcdef-0123").hash(secret)
    dump = sql(database_url, "SELECT row_to_json(k)::text AS row FROM api_keys k WHERE id = $1", tenant_key["id"])
    assert secret not in dump[0]["row"]
    assert secret[len("sk-meter-") :] not in dump[0]["row"]


def test_a_key_with_a_legacy_hash_works_and_is_rehashed_on_first_use(
    database_url: str, meter: Process, guarded: Process, admin: Admin
) -> None:
    key = admin.issue_key(admin.create_tenant("legacy")["id"])
    # As stored before the pepper existed: plain SHA-256. No meter process has read this key yet.
    sql(database_url, "UPDATE api_keys SET key_hash = $1 WHERE id = $2", legacy_hash(key["key"]), key["id"])
    with httpx.Client(timeout=30) as client:
        assert call(client, meter, key["key"]).status_code == 200
    assert stored_hashes(database_url, key["id"])[0] == KeyHasher(KEY_PEPPER).hash(key["key"])
    # Another process, which has never seen the key, finds it by its new hash.
    with httpx.Client(timeout=30) as client:
        assert call(client, guarded, key["key"]).status_code == 200


def test_an_unknown_key_is_looked_up_once(guarded: Process, client_from_own_address: httpx.Client) -> None:
    made_up = "sk-meter-" + secrets.token_urlsafe(32)
    lookups = metric(guarded.base_url, "meter_db_round_trips_total", purpose="key_lookup")
    for _ in range(FAILURES_ALLOWED):
        response = call(client_from_own_address, guarded, made_up)
        assert response.status_code == 401
    assert metric(guarded.base_url, "meter_db_round_trips_total", purpose="key_lookup") == lookups + 1


def test_an_address_that_keeps_failing_is_throttled_but_known_keys_still_work(
    guarded: Process, admin: Admin, tenant_key: dict[str, Any], client_from_own_address: httpx.Client
) -> None:
    client = client_from_own_address
    fresh = admin.issue_key(admin.create_tenant("fresh")["id"])
    # Known to this process before the flood.
    assert call(client, guarded, tenant_key["key"]).status_code == 200
    failures = metric(guarded.base_url, "meter_auth_failures_total", type="authentication_error")
    throttled = metric(guarded.base_url, "meter_auth_failures_total", type="rate_limit_error")
    for _ in range(FAILURES_ALLOWED):
        refused = call(client, guarded, "sk-meter-" + secrets.token_urlsafe(32))
        assert refused.status_code == 401
        anthropic_error(refused.status_code, refused.headers, refused.content, "authentication_error")
    refused = call(client, guarded, "sk-meter-" + secrets.token_urlsafe(32))
    assert refused.status_code == 429
    anthropic_error(refused.status_code, refused.headers, refused.content, "rate_limit_error")
    assert int(refused.headers["retry-after"]) >= 1
    # A real key this process has not read yet is refused from this address too ...
    assert call(client, guarded, fresh["key"]).status_code == 429
    # ... but not a key it already knows,
    assert call(client, guarded, tenant_key["key"]).status_code == 200
    # ... nor any other address.
    with httpx.Client(timeout=30) as other:
        assert call(other, guarded, fresh["key"]).status_code == 200
    assert metric(guarded.base_url, "meter_auth_failures_total", type="authentication_error") == failures + 3
    assert metric(guarded.base_url, "meter_auth_failures_total", type="rate_limit_error") == throttled + 2


def test_missing_or_malformed_credentials_count_as_failures(
    guarded: Process, client_from_own_address: httpx.Client
) -> None:
    """They cost meter no lookup, so they are refused as such (401), but they use up the address's
    budget: a made-up key after them is throttled."""
    failures = metric(guarded.base_url, "meter_auth_failures_total", type="authentication_error")
    statuses = [
        client_from_own_address.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers).status_code
        for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer"}, {"x-api-key": ""})
    ]
    assert statuses == [401] * 4
    assert metric(guarded.base_url, "meter_auth_failures_total", type="authentication_error") == failures + 4
    assert call(client_from_own_address, guarded, "sk-meter-" + secrets.token_urlsafe(32)).status_code == 429
