"""Typing frames: every change goes on to the other side, a repeat of the same state at most once a second."""

from support.api.controllers.conversations import TypingRelay


def test_changes_go_on_and_repeats_within_the_interval_are_dropped() -> None:
    relay = TypingRelay(interval_s=1.0)

    assert relay.due(active=True, now=10.0)
    assert not relay.due(active=True, now=10.2)  # one frame per keystroke: the other side knows already
    assert not relay.due(active=True, now=10.9)
    assert relay.due(active=False, now=11.0)  # stopped typing: always told
    assert relay.due(active=True, now=11.1)
    assert relay.due(active=True, now=12.1)  # still typing a second later: told again (indicators expire)
    assert not relay.due(active=True, now=12.5)
