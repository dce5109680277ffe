import pytest

from support.config import SettingsError, WebhookSettings, load_settings


def test_webhook_settings_are_read_from_their_group() -> None:
    settings = load_settings(
        {
            "SUPPORT_WEBHOOKS__TIMEOUT_S": "2.5",
            "SUPPORT_WEBHOOKS__MAX_ATTEMPTS": "4",
            "SUPPORT_WEBHOOKS__BACKOFF_BASE_S": "0.5",
            "SUPPORT_WEBHOOKS__BACKOFF_CAP_S": "8",
            "SUPPORT_WEBHOOKS__POLL_INTERVAL_S": "0.1",
            "SUPPORT_WEBHOOKS__BATCH_SIZE": "7",
            "SUPPORT_WEBHOOKS__RETENTION_DAYS": "0",
        }
    )
    assert settings.webhooks == WebhookSettings(
        timeout_s=2.5,
        max_attempts=4,
        backoff_base_s=0.5,
        backoff_cap_s=8,
        poll_interval_s=0.1,
        batch_size=7,
        retention_days=0,
    )
    assert load_settings({}).webhooks.retention_days == 30


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"SUPPORT_WEBHOOKS__MAX_ATTEMPTS": "0"}, "SUPPORT_WEBHOOKS__MAX_ATTEMPTS"),
        ({"SUPPORT_WEBHOOKS__TIMEOUT_S": "0"}, "SUPPORT_WEBHOOKS__TIMEOUT_S"),
        ({"SUPPORT_WEBHOOKS__RETENTION_DAYS": "-1"}, "SUPPORT_WEBHOOKS__RETENTION_DAYS"),
        ({"SUPPORT_WEBHOOKS__BACKOFF_BASE_S": "10", "SUPPORT_WEBHOOKS__BACKOFF_CAP_S": "5"}, "SUPPORT_WEBHOOKS"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_variable(environment: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environment)
    assert str(raised.value).startswith(f"{named}:")


@pytest.mark.parametrize(
    ("environment", "allowed"),
    [
        ({}, True),
        ({"SUPPORT_ENV": "test"}, True),
        ({"SUPPORT_ENV": "prod"}, False),
        ({"SUPPORT_ENV": "prod", "SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true"}, True),
        ({"SUPPORT_ENV": "dev", "SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "false"}, False),
    ],
)
def test_private_webhook_targets_are_allowed_outside_prod_unless_set(
    environment: dict[str, str], *, allowed: bool
) -> None:
    assert load_settings(environment).private_webhook_targets_allowed is allowed


def test_a_bad_private_targets_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS:"):
        load_settings({"SUPPORT_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "sometimes"})
