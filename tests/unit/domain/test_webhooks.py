import ipaddress
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from support.domain.webhooks import (
    WEBHOOK_SECRET_PREFIX,
    DeliveryStatus,
    InvalidWebhookUrlError,
    OutboundEvent,
    RetrySchedule,
    WebhookDelivery,
    WebhookEventType,
    delivery_headers,
    encode_event,
    generate_webhook_secret,
    host_address,
    is_public_address,
    sign,
    validate_webhook_url,
    verify_signature,
    webhook_secret_hint,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENT_ID = UUID("01890a5d-ac96-774b-bcce-b302099a8057")


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # Computed independently: printf '%s' '1767225600.{"id":"x"}' | openssl dgst -sha256 -hmac whsec_test-secret
    expected = "8cefae5bee29ffeeb5a4996de3a90d55ba4e69d039b278cbdff09232e4bd9f93"
    assert sign("whsec_test-secret", 1767225600, b'{"id":"x"}') == expected


def test_headers_name_the_event_the_time_and_the_signature() -> None:
    body = b'{"id":"x"}'
    headers = delivery_headers(EVENT_ID, "whsec_test-secret", 1767225600, body)
    assert headers == {
        "Content-Type": "application/json",
        "Webhook-Id": str(EVENT_ID),
        "Webhook-Timestamp": "1767225600",
        "Webhook-Signature": "v1=8cefae5bee29ffeeb5a4996de3a90d55ba4e69d039b278cbdff09232e4bd9f93",
    }


def test_verification_accepts_the_signature_and_rejects_any_change() -> None:
    secret, body = generate_webhook_secret(), b'{"id":"x","data":{}}'
    header = delivery_headers(EVENT_ID, secret, 1767225600, body)["Webhook-Signature"]
    assert verify_signature(secret, 1767225600, body, header)
    # Several signatures (a secret being rotated) are space-separated; one valid entry is enough.
    assert verify_signature(secret, 1767225600, body, f"v1=00ff {header}")
    assert not verify_signature(secret, 1767225601, body, header)
    assert not verify_signature(secret, 1767225600, body + b" ", header)
    assert not verify_signature(generate_webhook_secret(), 1767225600, body, header)
    assert not verify_signature(secret, 1767225600, body, header.replace("v1=", "v0="))


def test_secrets_are_random_and_hinted_by_their_beginning() -> None:
    secrets = {generate_webhook_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert secret.startswith(WEBHOOK_SECRET_PREFIX)
        assert len(secret) >= len(WEBHOOK_SECRET_PREFIX) + 43  # 32 random bytes, base64url
        hint = webhook_secret_hint(secret)
        assert secret.startswith(hint)
        assert len(hint) < len(secret) // 4


def test_body_is_compact_json_with_the_documented_fields() -> None:
    conversation = UUID("01890a5d-ac96-774b-bcce-b302099a8058")
    event = OutboundEvent(
        id=EVENT_ID,
        type=WebhookEventType.HANDOFF_REQUESTED,
        conversation_id=conversation,
        occurred_at=datetime(2026, 3, 1, 13, 0, tzinfo=UTC) + timedelta(microseconds=5),
        data={"reason_code": "customer_request", "note": "café"},
    )
    body = encode_event(event)
    assert json.loads(body) == {
        "id": str(EVENT_ID),
        "type": "handoff.requested",
        "created_at": "2026-03-01T13:00:00.000005Z",
        "conversation_id": str(conversation),
        "data": {"reason_code": "customer_request", "note": "café"},
    }
    assert b" " not in body.replace("café".encode(), b"")
    assert encode_event(event) == body
    assert (
        json.loads(encode_event(OutboundEvent(EVENT_ID, WebhookEventType.MESSAGE_CREATED, None, NOW)))[
            "conversation_id"
        ]
        is None
    )


def test_data_that_is_not_json_is_refused() -> None:
    event = OutboundEvent(EVENT_ID, WebhookEventType.MESSAGE_CREATED, None, NOW, data={"id": EVENT_ID})
    with pytest.raises(TypeError):
        encode_event(event)


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/support", "http://203.0.113.9:9000/in?token=abc", "  https://x.example/  "]
)
def test_absolute_http_urls_are_accepted(url: str) -> None:
    assert validate_webhook_url(url, allow_private_targets=True) == url.strip()


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/support",
        "https://crm.example.com:8443/in?token=abc",
        "http://8.8.8.8/hooks",
        "http://134744072/hooks",  # 8.8.8.8 written as one number
        "https://[2606:4700:4700::1111]/hooks",
        "https://[::ffff:8.8.8.8]/hooks",
        "https://1e100.net/",  # ends in a letter: a name, resolved (and checked) when a delivery is sent
        "https://127.0.0.1.nip.io/",  # a name too; the delivery-time check sees where it resolves
        "https://localhost.example.com/",
    ],
)
def test_public_targets_are_accepted_when_private_ones_are_not(url: str) -> None:
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/in",
        "http://127.8.9.10/",
        "http://localhost:8000/hooks",
        "http://LOCALHOST./hooks",
        "http://api.localhost/hooks",
        "http://0.0.0.0:8000/",
        "http://0/",
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://172.31.255.255/",
        "http://192.168.1.20/",
        "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://198.18.0.1/",
        "http://192.0.2.1/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fe80::1%25eth0]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[ff02::1]/",
        "http://[2001:db8::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::1]/",  # local-use NAT64
        "http://[2001::1]/",  # Teredo
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/",
        "http://0X7F.0.0.1/",
        "http://0177.0.0.1/",  # octal
        "http://127.1/",
        "http://127.0.1/",
        "http://127.0.0.1./",
        "http://0xa9fea9fe/",  # 169.254.169.254
        "http://3232235777/",  # 192.168.1.1
    ],
)
def test_private_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidWebhookUrlError, match="only sent to public hosts") as raised:
        validate_webhook_url(url)
    assert raised.value.code == "invalid_webhook_url"
    assert validate_webhook_url(url, allow_private_targets=True) == url


@pytest.mark.parametrize(
    "url", ["http://1.2.3.4.5/", "http://256.0.0.1/", "http://09/", "http://0x1g.0.0.1/", "http://0x/"]
)
def test_hosts_that_are_numbers_but_no_address_are_refused(url: str) -> None:
    with pytest.raises(InvalidWebhookUrlError, match="neither a host name nor a valid IP address"):
        validate_webhook_url(url)


def test_the_refusal_says_which_address_a_numeric_host_means() -> None:
    with pytest.raises(InvalidWebhookUrlError) as raised:
        validate_webhook_url("http://2130706433/hooks")
    assert "2130706433 (that is 127.0.0.1) is not a public address" in str(raised.value)
    with pytest.raises(InvalidWebhookUrlError) as raised:
        validate_webhook_url("http://localhost/hooks")
    assert "localhost is this machine" in str(raised.value)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0", "0.0.0.0"),  # noqa: S104 - an address to classify, not to bind
        ("8.8.8.8.", "8.8.8.8"),
        ("::1", "::1"),
        ("example.com", None),
        ("1e100.net", None),
        ("123.example", None),
        ("xn--bcher-kva.example", None),
    ],
)
def test_hosts_are_read_as_addresses_the_way_the_resolver_reads_them(host: str, address: str | None) -> None:
    expected = None if address is None else ipaddress.ip_address(address)
    assert host_address(host) == expected


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("2002:808:808::", True),  # 6to4 of a public address
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("127.0.0.1", False),
        ("10.255.255.255", False),
        ("169.254.0.1", False),
        ("100.127.255.254", False),
        ("0.0.0.0", False),  # noqa: S104
        ("224.0.0.251", False),
        ("::1", False),
        ("::", False),
        ("fe80::abcd", False),
        ("fd00::1", False),
        ("::ffff:192.168.0.1", False),
        ("::ffff:0.0.0.0", False),
        ("::10.0.0.1", False),
        ("2002:c0a8:1::", False),
        ("64:ff9b::7f00:1", False),
        ("ff0e::1", False),
    ],
)
def test_addresses_are_classified_as_public_or_not(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://files.example.com/in",
        "hooks.example.com/support",
        "/relative/path",
        "https://",
        "https://user:pass@hooks.example.com/",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/#part",
        "https://hooks.example.com:99999/",
        "https://hooks.example.com:0/",
        "javascript:alert(1)",
        "https://example.com/" + "a" * 2000,
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidWebhookUrlError) as raised:
        validate_webhook_url(url)
    assert raised.value.code == "invalid_webhook_url"


def test_backoff_doubles_up_to_the_cap_within_the_upper_half() -> None:
    schedule = RetrySchedule(base_s=5, cap_s=60, max_attempts=10)
    ceilings = [5, 10, 20, 40, 60, 60]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert schedule.delay(attempt, 0.0) == timedelta(seconds=ceiling / 2)
        assert schedule.delay(attempt, 0.999) < timedelta(seconds=ceiling)
        assert schedule.delay(attempt, 0.999) > timedelta(seconds=ceiling * 0.99)
    assert schedule.delay(10_000, 0.5) == timedelta(seconds=45)


def test_schedule_is_exhausted_after_max_attempts() -> None:
    schedule = RetrySchedule(base_s=1, cap_s=1, max_attempts=3)
    assert [schedule.exhausted(attempts) for attempts in (1, 2, 3, 4)] == [False, False, True, True]
    for base, cap, attempts in ((0, 1, 1), (2, 1, 1), (1, 1, 0)):
        with pytest.raises(ValueError, match="RetrySchedule"):
            RetrySchedule(base_s=base, cap_s=cap, max_attempts=attempts)


def _delivery(attempts: int) -> WebhookDelivery:
    return WebhookDelivery(
        id=EVENT_ID,
        event_id=EVENT_ID,
        webhook_id=EVENT_ID,
        event_type=WebhookEventType.HANDOFF_CLAIMED,
        status=DeliveryStatus.PENDING,
        attempts=attempts,
        next_attempt_at=NOW + timedelta(seconds=20),
        created_at=NOW,
        last_attempt_at=NOW,
    )


def test_a_failed_attempt_is_retried_after_the_backoff_then_given_up() -> None:
    schedule = RetrySchedule(base_s=4, cap_s=100, max_attempts=3)
    retried = _delivery(attempts=2).failed(503, "HTTP 503", NOW, schedule, jitter=0.0)
    assert retried.status is DeliveryStatus.PENDING
    assert retried.next_attempt_at == NOW + timedelta(seconds=4)  # ceiling 8 s, lower half bound
    assert (retried.last_status_code, retried.last_error) == (503, "HTTP 503")
    given_up = _delivery(attempts=3).failed(None, "no answer", NOW, schedule, jitter=0.0)
    assert given_up.status is DeliveryStatus.FAILED
    assert (given_up.last_status_code, given_up.last_error) == (None, "no answer")


def test_a_successful_attempt_clears_the_last_error() -> None:
    failed = _delivery(attempts=1).failed(500, "HTTP 500", NOW, RetrySchedule(1, 1, 5), jitter=0.0)
    delivered = failed.succeeded(204, NOW + timedelta(seconds=3))
    assert delivered.status is DeliveryStatus.DELIVERED
    assert (delivered.last_status_code, delivered.last_error) == (204, None)
    assert delivered.delivered_at == NOW + timedelta(seconds=3)


def test_a_redelivery_is_due_at_once_and_its_retry_budget_starts_again() -> None:
    schedule = RetrySchedule(base_s=4, cap_s=100, max_attempts=3)
    given_up = _delivery(attempts=3).failed(500, "HTTP 500", NOW, schedule, jitter=0.0)
    later = NOW + timedelta(days=1)
    redelivered = given_up.redelivered(later)
    assert (redelivered.status, redelivered.next_attempt_at) == (DeliveryStatus.PENDING, later)
    assert (redelivered.attempts, redelivered.attempts_since_redelivery) == (3, 0)
    assert (redelivered.last_status_code, redelivered.last_error) == (500, "HTTP 500")
    # Its first attempt (the 4th in all) fails: retried after the first backoff, not given up.
    first = replace(redelivered, attempts=4).failed(503, "HTTP 503", later, schedule, jitter=0.0)
    assert (first.status, first.next_attempt_at) == (DeliveryStatus.PENDING, later + timedelta(seconds=2))
    assert (
        replace(redelivered, attempts=6).failed(503, "HTTP 503", later, schedule, 0.0).status is DeliveryStatus.FAILED
    )


def test_a_delivered_delivery_redelivered_is_no_longer_delivered() -> None:
    delivered = _delivery(attempts=1).succeeded(200, NOW)
    redelivered = delivered.redelivered(NOW + timedelta(hours=1))
    assert (redelivered.status, redelivered.delivered_at) == (DeliveryStatus.PENDING, None)
    assert redelivered.attempts_before_redelivery == 1
