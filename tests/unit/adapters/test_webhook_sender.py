"""The httpx sender against a real local HTTP server, and its guard against private targets."""

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable

import httpcore
import pytest

from support.adapters.http.webhooks import (
    HttpxWebhookSender,
    PrivateTargetError,
    PublicAddressBackend,
    Resolver,
    resolve,
)
from support.devservers.postgres import free_port
from support.domain.webhooks import IPAddress
from tests.fakes.webhooks import HOLD, WebhookReceiver


@pytest.fixture
async def sender() -> AsyncIterator[HttpxWebhookSender]:
    """A sender that may reach the receiver on 127.0.0.1 (development settings)."""
    sender = HttpxWebhookSender(timeout_s=0.5, allow_private_targets=True)
    yield sender
    await sender.aclose()


@pytest.fixture
async def guarded() -> AsyncIterator[HttpxWebhookSender]:
    """A sender with private targets refused (production settings)."""
    sender = HttpxWebhookSender(timeout_s=0.5)
    yield sender
    await sender.aclose()


def resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    """A resolver answering from ``table`` (a name missing from it does not resolve), recording the names asked."""

    async def lookup(host: str, port: int) -> list[IPAddress]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(address) for address in table[host]]

    return lookup


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where it is asked to connect; refuses every address but ``accept``."""

    def __init__(self, accept: str | None = None) -> None:
        self.connected: list[tuple[str, int]] = []
        self._accept = accept

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        del timeout, local_address, socket_options  # part of the interface, not needed here
        self.connected.append((host, port))
        if host != self._accept:
            raise httpcore.ConnectError(f"refused by {host}")
        return httpcore.AsyncNetworkStream()


async def test_posts_the_body_and_headers_and_returns_the_status(sender: HttpxWebhookSender) -> None:
    async with WebhookReceiver(204, 500, 302) as receiver:
        headers = {"Content-Type": "application/json", "Webhook-Id": "e-1"}
        results = [await sender.send(receiver.url, b'{"id":"e-1"}', headers) for _ in range(3)]
        assert [(result.status_code, result.ok) for result in results] == [(204, True), (500, False), (302, False)]
        first = receiver.requests[0]
        assert first.path == "/hooks"
        assert first.body == b'{"id":"e-1"}'
        assert first.headers["webhook-id"] == "e-1"
        assert first.headers["content-type"] == "application/json"
        assert first.headers["user-agent"] == "support-webhooks"
        # The 302 was not followed: three requests, all to the registered URL.
        assert len(receiver.requests) == 3


async def test_an_endpoint_that_does_not_answer_in_time_is_an_error_result(sender: HttpxWebhookSender) -> None:
    async with WebhookReceiver(HOLD) as receiver:
        result = await sender.send(receiver.url, b"{}", {})
        receiver.release()
    assert (result.status_code, result.ok) == (None, False)
    assert result.error == "no answer within 0.5 s"


async def test_a_refused_connection_is_an_error_result(sender: HttpxWebhookSender) -> None:
    result = await sender.send(f"http://127.0.0.1:{free_port()}/hooks", b"{}", {})
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("ConnectError")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "2130706433", "[::1]"])
async def test_a_private_target_is_not_sent_to_when_private_targets_are_refused(
    guarded: HttpxWebhookSender, host: str
) -> None:
    async with WebhookReceiver() as receiver:
        result = await guarded.send(f"http://{host}:{receiver.port}/hooks", b"{}", {"Webhook-Id": "e-1"})
    assert (result.status_code, result.ok) == (None, False)
    assert result.error is not None
    assert result.error.startswith(f"not sent: {host.strip('[]')} ")
    assert result.error.endswith("is not a public address (private targets are not allowed)")
    assert receiver.requests == []


async def test_a_name_that_resolves_to_a_private_address_is_not_sent_to() -> None:
    """DNS decides, not the name: a public-looking name pointing at the internal network is refused."""
    sender = HttpxWebhookSender(timeout_s=0.5, resolver=resolver({"crm.example.com": ["93.184.215.14", "10.0.0.5"]}))
    try:
        result = await sender.send("https://crm.example.com/hooks", b"{}", {})
    finally:
        await sender.aclose()
    assert result.error == (
        "not sent: crm.example.com resolves to 10.0.0.5, which is not a public address"
        " (private targets are not allowed)"
    )


async def test_the_guard_resolves_once_and_connects_to_the_checked_address() -> None:
    """No second lookup between the check and the connection, so a rebinding DNS answer cannot slip in."""
    calls: list[str] = []
    inner = RecordingBackend(accept="2001:4860:4860::8888")
    backend = PublicAddressBackend(inner, resolver({"crm.example.com": ["8.8.8.8", "2001:4860:4860::8888"]}, calls))
    stream = await backend.connect_tcp("crm.example.com", 443, timeout=1)
    assert isinstance(stream, httpcore.AsyncNetworkStream)
    assert calls == ["crm.example.com"]
    # The first address refused the connection; the next one (also checked) was tried.
    assert inner.connected == [("8.8.8.8", 443), ("2001:4860:4860::8888", 443)]


async def test_the_guard_refuses_before_connecting_and_reports_resolution_failures() -> None:
    inner = RecordingBackend()
    backend = PublicAddressBackend(inner, resolver({"metadata.internal": ["169.254.169.254"]}))
    with pytest.raises(PrivateTargetError, match=r"metadata\.internal resolves to 169\.254\.169\.254"):
        await backend.connect_tcp("metadata.internal", 80)
    with pytest.raises(httpcore.ConnectError, match="Name or service not known"):
        await backend.connect_tcp("nowhere.invalid", 80)
    with pytest.raises(httpcore.ConnectError, match=r"refused by 8\.8\.8\.8"):
        await PublicAddressBackend(inner, resolver({"dns.google": ["8.8.8.8"]})).connect_tcp("dns.google", 80)
    assert inner.connected == [("8.8.8.8", 80)]


async def test_the_system_resolver_reads_numeric_hosts_as_the_c_library_does() -> None:
    """Why the guard resolves every host, numbers included: ``2130706433`` and ``0x7f.1`` are 127.0.0.1."""
    for host in ("2130706433", "0x7f.1", "127.1", "localhost"):
        addresses = await resolve(host, 80)
        assert addresses
        assert all(address.is_loopback for address in addresses), (host, addresses)
