"""The client address the per-address limit keys on, and the RateLimit header values."""

from typing import Any

import pytest

from support.api.limits import TrustedProxies, client_partition, frame_limit, header_values
from support.domain.limits import RateDecision, RatePolicy


def scope(peer: str | None, *forwarded: str) -> Any:
    return {
        "type": "http",
        "client": (peer, 50000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


PROXIES = TrustedProxies.parse(["10.0.0.0/8", "::1"])


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_forwards() -> None:
    assert client_partition(scope("203.0.113.9", "198.51.100.1"), TrustedProxies()) == "203.0.113.9"
    # A peer that is not one of our proxies cannot pick its address either.
    assert client_partition(scope("203.0.113.9", "198.51.100.1"), PROXIES) == "203.0.113.9"


def test_behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() -> None:
    assert client_partition(scope("10.1.2.3", "198.51.100.1"), PROXIES) == "198.51.100.1"
    # Hops the client wrote itself sit left of the one our proxy appended: they are never reached.
    assert client_partition(scope("10.1.2.3", "6.6.6.6, 198.51.100.1"), PROXIES) == "198.51.100.1"
    # Two proxies of ours, one header each: still the first address they did not add.
    assert client_partition(scope("10.1.2.3", "198.51.100.1, 10.9.9.9", "10.4.4.4"), PROXIES) == "198.51.100.1"
    # Nothing readable beyond our own proxies: the last one we could read.
    assert client_partition(scope("10.1.2.3", "garbage, 10.9.9.9"), PROXIES) == "10.9.9.9"
    assert client_partition(scope("10.1.2.3"), PROXIES) == "10.1.2.3"


def test_ipv6_clients_are_limited_per_64_and_mapped_ipv4_as_ipv4() -> None:
    first = client_partition(scope("2001:db8:1:2::1"), TrustedProxies())
    second = client_partition(scope("2001:db8:1:2:ffff::9"), TrustedProxies())
    assert first == second == "2001:db8:1:2::/64"
    assert client_partition(scope("2001:db8:1:3::1"), TrustedProxies()) != first
    assert client_partition(scope("::ffff:192.0.2.7"), TrustedProxies()) == "192.0.2.7"
    assert client_partition(scope("::1", "2001:db8::5"), PROXIES) == "2001:db8::/64"


def test_a_peer_without_an_address_is_still_one_client() -> None:
    assert client_partition(scope("testclient"), PROXIES) == "testclient"
    assert client_partition(scope(None), PROXIES) is None


def test_bad_trusted_proxies_are_refused() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        TrustedProxies.parse(["10.0.0.0/8", "proxy.internal"])


def test_headers_list_every_policy_checked_as_structured_fields() -> None:
    decisions = [
        RateDecision(RatePolicy("customer", 60, 60), allowed=True, remaining=12, reset_s=1, retry_after_s=0),
        RateDecision(RatePolicy("ip", 120, 60), allowed=False, remaining=0, reset_s=5, retry_after_s=5),
    ]
    policy, limit = header_values(decisions)
    assert policy == b'"customer";q=60;w=60, "ip";q=120;w=60'
    assert limit == b'"customer";r=12;t=1, "ip";r=0;t=5'


def test_a_frame_can_hold_the_longest_message_fully_escaped() -> None:
    assert frame_limit(8000) >= len('{"type":"send","content":""}') + 12 * 8000
