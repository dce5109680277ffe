"""The escalation policy file and agents' hours, as the container builds them from settings."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from support.config import SettingsError, load_settings
from support.container.app import escalation_policy, handoff_settings
from support.domain.conversations import HandoffAction


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_policy_file_replaces_the_fields_it_names(tmp_path: Path) -> None:
    policy_file = write(
        tmp_path,
        """
[escalation]
refund_amount_limit = 250
repeated_failure_limit = 3

[[escalation.sensitive_topics]]
name = "warranty_claim"
patterns = ['\\bwarranty\\b']
""",
    )
    policy = escalation_policy(load_settings({"SUPPORT_HANDOFF__POLICY_FILE": policy_file}))

    assert policy.rules.refund_amount_limit == Decimal(250)
    assert policy.rules.repeated_failure_limit == 3
    assert policy.screen("Is it under warranty?", []).decision.rule == "sensitive_topic.warranty_claim"
    assert policy.screen("I'll call my lawyer", []).decision.action is HandoffAction.ANSWER  # topics replaced
    assert policy.screen("Can I talk to a human?", []).decision.action is HandoffAction.ESCALATE  # kept default
    assert policy.screen("refund of $200", []).decision.action is HandoffAction.ANSWER


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[escalation]\nrefund_amount_limit = -1\n", "refund_amount_limit"),
        ("[escalation]\nunknown_rule = 1\n", "unknown_rule"),
        ("[escalation]\nhuman_request_patterns = ['(unclosed']\n", "does not compile"),
        ("not toml at all = = =", "POLICY_FILE"),
    ],
)
def test_a_bad_policy_file_stops_the_process_with_a_clear_message(tmp_path: Path, text: str, named: str) -> None:
    settings = load_settings({"SUPPORT_HANDOFF__POLICY_FILE": write(tmp_path, text)})

    with pytest.raises(SettingsError, match=named):
        escalation_policy(settings)


def test_a_missing_policy_file_is_named() -> None:
    with pytest.raises(SettingsError, match=r"nowhere\.toml"):
        escalation_policy(load_settings({"SUPPORT_HANDOFF__POLICY_FILE": "/nowhere.toml"}))


def test_agents_hours_come_from_the_settings() -> None:
    settings = load_settings(
        {
            "SUPPORT_HANDOFF__TIMEZONE": "America/New_York",
            "SUPPORT_HANDOFF__DAYS": "5,6",
            "SUPPORT_HANDOFF__OPENS": "10:00",
            "SUPPORT_HANDOFF__CLOSES": "14:30",
        }
    )
    hours = handoff_settings(settings).hours

    assert hours.is_open(datetime(2026, 5, 9, 15, 0, tzinfo=UTC))  # Saturday 11:00 in New York
    assert not hours.is_open(datetime(2026, 5, 6, 15, 0, tzinfo=UTC))  # a Wednesday
    with pytest.raises(SettingsError, match="Mars/Olympus"):
        handoff_settings(load_settings({"SUPPORT_HANDOFF__TIMEZONE": "Mars/Olympus"}))


@pytest.mark.parametrize(("variable", "value"), [("OPENS", "25:99"), ("CLOSES", "24:00")])
def test_a_time_of_day_out_of_range_is_named(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"^SUPPORT_HANDOFF__{variable}: '{value}' is not a time of day"):
        handoff_settings(load_settings({f"SUPPORT_HANDOFF__{variable}": value}))
