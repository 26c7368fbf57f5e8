"""meter's Standard Webhooks signatures against the reference library's, and the secrets' form."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from meter.webhooks import signing


def test_a_signature_is_the_reference_librarys() -> None:
    secret = signing.new_secret()
    body = b'{"type":"key.expiring","data":{}}'
    moment = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    ours = signing.sign(secret, "msg_1", int(moment.timestamp()), body)
    assert ours == Webhook(secret).sign("msg_1", moment, body.decode())


def test_the_specifications_example() -> None:
    # The example of the Standard Webhooks specification (its reference libraries' test vector).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secrets_are_32_random_bytes_and_every_signature_is_checked() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.new_secret() != secret
    other = signing.new_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([other, secret], "msg_2", now, b"{}")
    assert headers["webhook-signature"].count("v1,") == 2
    Webhook(secret).verify(b"{}", headers)
    Webhook(other).verify(b"{}", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(b"{}", headers)
