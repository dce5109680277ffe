"""Where rate limits apply, the client address they key on, and the IETF ``RateLimit`` headers.

The role guard calls :func:`enforce_rate_limits` once the caller is known: one script call to Valkey checks every
limit of the request at once (the caller's key or customer and address, and the conversation when the request
sends a customer message). A message send does not wait for the verdict in the guard: it is counted while the
handler reads the body and looks the question up in the embedding cache, and the handler awaits it
(:func:`send_admission`) before the model runs or anything is stored. The decisions wait in the connection's
state until :func:`rate_limit_headers` adds ``RateLimit-Policy`` and ``RateLimit`` to the response
(draft-ietf-httpapi-ratelimit-headers), the 429 included.
"""

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from dishka import AsyncContainer
from litestar import WebSocket
from litestar.connection import ASGIConnection
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from support.application.limits import EnforceRateLimits
from support.application.tasks import started_early
from support.domain.identity import Principal
from support.domain.limits import RateDecision, RateLimitedError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Route handlers that send a customer message carry this in their ``opt``: they count per conversation too.
COUNTS_AS_MESSAGE = {"counts_as_message": True}
_STATE_KEY = "rate_limit_decisions"
_COUNTED_KEY = "rate_limit_counted"
_ADMISSION_KEY = "rate_limit_admission"
_FORWARDED_FOR = b"x-forwarded-for"
# IPv6 hosts usually get a /64 each: keying on the whole address would give one host 2**64 quotas.
_IPV6_PREFIX = 64


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Reverse proxies whose ``X-Forwarded-For`` is believed; with none, the peer address is the client's."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "TrustedProxies":
        """Addresses or CIDR networks.

        Raises:
            ValueError: an entry is neither.
        """
        return cls(tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()))

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(scope: Scope, proxies: TrustedProxies) -> IPAddress | None:
    """The client's address: the peer's, or, behind trusted proxies, the nearest untrusted hop of X-Forwarded-For.

    The header is read from the right, the end our own proxies appended, so a client cannot choose its address by
    sending one; it is ignored when the peer itself is not a trusted proxy.
    """
    client = scope.get("client")
    peer = _address(client[0]) if client else None
    if peer is None or not proxies.networks or not proxies.trusts(peer):
        return peer
    hops = [
        hop for name, value in scope["headers"] if name == _FORWARDED_FOR for hop in value.decode("latin-1").split(",")
    ]
    found = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # a hop we cannot read: the last one we could is as far as the chain can be believed
        found = address
        if not proxies.trusts(address):
            break
    return found


def client_partition(scope: Scope, proxies: TrustedProxies) -> str | None:
    """What the per-address limit keys on: the IPv4 address, or the IPv6 address's /64 network."""
    address = client_address(scope, proxies)
    if address is None:
        # Not an IP peer (a test client, a Unix socket): the name it gave, so it is still limited as one client.
        client = scope.get("client")
        return str(client[0]) if client else None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))
    return str(address)


async def enforce_rate_limits(
    connection: ASGIConnection[Any, Any, Any, Any], principal: Principal, *, conversation_id: UUID | None = None
) -> list[RateDecision]:
    """Count the request against its limits; the decisions are kept for the response headers.

    Raises:
        RateLimitedError: a limit is exhausted (answered 429 with ``Retry-After`` and the headers).
    """
    container: AsyncContainer = connection.state.dishka_container
    use_case = await container.get(EnforceRateLimits)
    client = client_partition(connection.scope, await container.get(TrustedProxies)) if principal.is_customer else None
    try:
        decisions = await use_case.execute(principal, client=client, conversation_id=conversation_id)
    except RateLimitedError as error:
        connection.scope.setdefault("state", {})[_STATE_KEY] = error.decisions
        raise
    if decisions:
        connection.scope.setdefault("state", {})[_STATE_KEY] = decisions
    return decisions


async def limit_request(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler, principal: Principal
) -> None:
    """The guard's part: every limit of the caller, and the conversation's when the handler sends a message.

    Counted once per request, however many role guards the handler has.
    """
    state = connection.scope.setdefault("state", {})
    if state.get(_COUNTED_KEY):
        return
    state[_COUNTED_KEY] = True
    if not handler.opt.get("counts_as_message"):
        await enforce_rate_limits(connection, principal)
        return
    found = connection.path_params.get("conversation_id")
    conversation_id = found if isinstance(found, UUID) else None
    # The Valkey round trip overlaps reading the body and the embedding-cache lookup; see send_admission.
    # Nobody awaits it when the request fails first.
    state[_ADMISSION_KEY] = started_early(enforce_rate_limits(connection, principal, conversation_id=conversation_id))


def send_admission(connection: ASGIConnection[Any, Any, Any, Any]) -> "asyncio.Future[Any] | None":
    """The rate-limit verdict of a message send, still running when the guard let the request through.

    Awaiting it raises :class:`RateLimitedError` when a limit is spent. The handler awaits it before the model
    runs or anything is stored, and before answering any other problem, so a spent limit is always a 429.
    None when the request was not counted as a send.
    """
    verdict: asyncio.Future[Any] | None = connection.scope.get("state", {}).get(_ADMISSION_KEY)
    return verdict


def _sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def header_values(decisions: Sequence[RateDecision]) -> tuple[bytes, bytes]:
    """``RateLimit-Policy`` and ``RateLimit`` (structured-field lists, one item per policy checked)."""
    policies = ", ".join(
        f"{_sf_string(item.policy.name)};q={item.policy.limit};w={item.policy.window_s}" for item in decisions
    )
    limits = ", ".join(f"{_sf_string(item.policy.name)};r={item.remaining};t={item.reset_s}" for item in decisions)
    return policies.encode(), limits.encode()


def rate_limit_headers(app: ASGIApp) -> ASGIApp:
    """Add the RateLimit headers to responses (and WebSocket accepts) of requests that were counted."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] in {"http.response.start", "websocket.accept"}:
                decisions = scope.get("state", {}).get(_STATE_KEY)
                if decisions:
                    policy, limit = header_values(decisions)
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"ratelimit-policy", policy),
                        (b"ratelimit", limit),
                    ]
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


# --- WebSocket frames -------------------------------------------------------------------------------------------------

WS_MESSAGE_TOO_BIG = 1009  # RFC 6455: a frame larger than the endpoint accepts


def frame_limit(max_message_chars: int) -> int:
    """The largest frame taken, in characters.

    Room for the longest message's JSON with every character escaped (one emoji as two escaped surrogates is twelve
    characters), plus the frame's other fields: a larger frame cannot hold a valid message.
    """
    return 12 * max_message_chars + 4096


async def receive_frame(socket: WebSocket[Any, Any, Any], limit: int) -> str | bytes:
    """The next client frame's data, for the caller to decode.

    Raises:
        WebSocketDisconnect: the client went away, or sent a frame over ``limit`` and the socket was closed with
            1009 (Message Too Big).
    """
    event = await socket.receive()
    if event["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="disconnect event", code=event.get("code", 1000))
    text, raw = event.get("text"), event.get("bytes")
    data: str | bytes = text if isinstance(text, str) else raw if isinstance(raw, bytes) else b""
    if len(data) > limit:
        await socket.close(code=WS_MESSAGE_TOO_BIG, reason=f"A frame has at most {limit} characters.")
        raise WebSocketDisconnect(detail="frame too large", code=WS_MESSAGE_TOO_BIG)
    return data
