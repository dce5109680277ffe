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
        }
    )
    assert settings.webhooks == WebhookSettings(
        timeout_s=2.5, max_attempts=4, backoff_base_s=0.5, backoff_cap_s=8, poll_interval_s=0.1, batch_size=7
    )


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"SUPPORT_WEBHOOKS__MAX_ATTEMPTS": "0"}, "SUPPORT_WEBHOOKS__MAX_ATTEMPTS"),
        ({"SUPPORT_WEBHOOKS__TIMEOUT_S": "0"}, "SUPPORT_WEBHOOKS__TIMEOUT_S"),
        ({"SUPPORT_WEBHOOKS__BACKOFF_BASE_S": "10", "SUPPORT_WEBHOOKS__BACKOFF_CAP_S": "5"}, "SUPPORT_WEBHOOKS"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_variable(environment: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environment)
    assert str(raised.value).startswith(f"{named}:")
