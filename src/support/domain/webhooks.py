"""Events the service tells the company's systems about, through signed webhooks."""

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Self
from urllib.parse import urlsplit
from uuid import UUID

from support.domain.errors import InvalidInputError, NotFoundError


class WebhookEventType(StrEnum):
    """What a webhook endpoint can subscribe to."""

    HANDOFF_REQUESTED = "handoff.requested"
    HANDOFF_CLAIMED = "handoff.claimed"
    # Nobody claimed it within the handoff's maximum wait: back to the assistant (a CRM closes the ticket it opened).
    HANDOFF_EXPIRED = "handoff.expired"
    # The customer cancelled the request for a person, or the agent who had it gave it back to the assistant.
    HANDOFF_WITHDRAWN = "handoff.withdrawn"
    HANDOFF_RELEASED = "handoff.released"
    # The agent who had it left (its key was revoked): it waits in the queue again for someone else.
    HANDOFF_REQUEUED = "handoff.requeued"
    CONVERSATION_RESOLVED = "conversation.resolved"
    # Closed by its customer, the company's backend, or the idle sweep (a conversation an agent had, included).
    CONVERSATION_CLOSED = "conversation.closed"
    # Messages an agent should see: the customer's, an agent's, system notices (not every reply delta).
    MESSAGE_CREATED = "message.created"


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """One event to deliver; ``id`` is stable across retries, so receivers deduplicate by it."""

    id: UUID
    type: WebhookEventType
    conversation_id: UUID | None
    occurred_at: datetime
    # JSON-ready data (strings, numbers, booleans, None, lists and mappings of them).
    data: Mapping[str, object] = field(default_factory=dict)


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a public prefix, not a secret
WEBHOOK_SECRET_BYTES = 32
MAX_WEBHOOK_URL_LENGTH = 2000
MAX_WEBHOOK_DESCRIPTION_LENGTH = 500
SIGNATURE_VERSION = "v1"


class WebhookNotFoundError(NotFoundError):
    """No webhook endpoint with this id exists."""

    code = "webhook_not_found"
    default_message = "The webhook was not found."


class WebhookDeliveryNotFoundError(NotFoundError):
    """The endpoint has no delivery with this id."""

    code = "webhook_delivery_not_found"
    default_message = "The webhook delivery was not found."


class InvalidWebhookUrlError(InvalidInputError):
    """The endpoint URL is not an absolute http(s) URL the service can POST to."""

    code = "invalid_webhook_url"
    default_message = "A webhook URL is an absolute http:// or https:// URL."


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges Python's ``is_global`` does not refuse on every supported version but no webhook endpoint lives in:
# IPv4-compatible IPv6 (deprecated, ::a.b.c.d) and the local-use NAT64 prefix (RFC 8215).
_NOT_PUBLIC_NETWORKS = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# The well-known NAT64 prefix (RFC 6052): its last 32 bits are the IPv4 address a NAT64 gateway connects to.
_NAT64_NETWORK = ipaddress.IPv6Network("64:ff9b::/96")


class DeliveryStatus(StrEnum):
    """Where one event's delivery to one endpoint stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    # Every attempt failed; nothing more is tried.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Webhook:
    """An endpoint of the company's that receives the events it subscribed to.

    Its signing secret is not part of the entity: it is shown once at creation and read only to sign.
    """

    id: UUID
    url: str
    description: str
    event_types: tuple[WebhookEventType, ...]
    # The first characters of the secret, so people can tell which secret an endpoint was given.
    secret_hint: str
    active: bool
    created_at: datetime

    def subscribes_to(self, event_type: WebhookEventType) -> bool:
        """Whether events of ``event_type`` are delivered to this endpoint."""
        return self.active and event_type in self.event_types


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff with jitter, capped, for a bounded number of attempts.

    The wait after attempt n is ``base_s * 2**(n-1)`` capped at ``cap_s``, then drawn from its upper half, so that
    the retries of many deliveries to an endpoint that was down spread out instead of arriving at once.
    """

    base_s: float
    cap_s: float
    max_attempts: int

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.max_attempts < 1:
            msg = "RetrySchedule needs 0 < base_s <= cap_s and max_attempts >= 1"
            raise ValueError(msg)

    def delay(self, attempt: int, jitter: float) -> timedelta:
        """The wait before the attempt after ``attempt`` (1-based); ``jitter`` is a random number in [0, 1)."""
        # min() before the power's result grows: 2**1000 is fine for ints but not for floats.
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 64))
        return timedelta(seconds=ceiling * (0.5 + 0.5 * jitter))

    def exhausted(self, attempts: int) -> bool:
        """No attempt follows the ``attempts``-th."""
        return attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event on its way to one endpoint, with the outcome of the latest attempt."""

    id: UUID
    event_id: UUID
    webhook_id: UUID
    event_type: WebhookEventType
    status: DeliveryStatus
    # Attempts started so far, redeliveries included; an attempt counts when it is claimed, so one cut short by a
    # crash counts too.
    attempts: int
    # When the next attempt may start (pending), or until when a claimed attempt is leased to its worker.
    next_attempt_at: datetime
    created_at: datetime
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    # ``attempts`` when an admin last asked for a redelivery (0: never). The retry budget and the backoff count
    # only the attempts after it, so a redelivery gets every attempt a new event gets while ``attempts`` stays the
    # total the endpoint was sent.
    attempts_before_redelivery: int = 0

    @property
    def attempts_since_redelivery(self) -> int:
        """Attempts of the current run: since the latest redelivery, or since the event when there was none."""
        return self.attempts - self.attempts_before_redelivery

    def succeeded(self, status_code: int, now: datetime) -> Self:
        """The delivery after the endpoint accepted the latest attempt."""
        return replace(
            self, status=DeliveryStatus.DELIVERED, last_status_code=status_code, last_error=None, delivered_at=now
        )

    def failed(
        self, status_code: int | None, error: str, now: datetime, schedule: RetrySchedule, jitter: float
    ) -> Self:
        """The delivery after the latest attempt failed: retried later, or given up after the last attempt."""
        if schedule.exhausted(self.attempts_since_redelivery):
            return replace(self, status=DeliveryStatus.FAILED, last_status_code=status_code, last_error=error)
        return replace(
            self,
            next_attempt_at=now + schedule.delay(self.attempts_since_redelivery, jitter),
            last_status_code=status_code,
            last_error=error,
        )

    def redelivered(self, now: datetime) -> Self:
        """The delivery put back in the queue by an admin, whatever its status: due at ``now``, a fresh retry budget.

        The last status code and error stay until the next attempt replaces them (they describe the last attempt
        made); ``delivered_at`` is cleared, since the delivery is under way again.
        """
        return replace(
            self,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            delivered_at=None,
            attempts_before_redelivery=self.attempts,
        )


def generate_webhook_secret() -> str:
    """A new signing secret (shown to the admin once)."""
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(WEBHOOK_SECRET_BYTES)


def webhook_secret_hint(secret: str) -> str:
    """The displayable beginning of a signing secret."""
    return secret[: len(WEBHOOK_SECRET_PREFIX) + 4]


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address, one a webhook may be delivered to by default.

    Not public: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 with the cloud
    metadata service, fe80::/10), shared (100.64/10), unspecified (0.0.0.0, ::), documentation, benchmarking,
    reserved and multicast ranges, and IPv6 addresses that embed one of those IPv4 addresses (IPv4-mapped
    ``::ffff:127.0.0.1``, 6to4 ``2002:7f00:1::``, NAT64 ``64:ff9b::7f00:1``).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # Sockets connect to the IPv4 address itself; Python versions differ on is_global for these.
            return is_public_address(address.ipv4_mapped)
        embedded = [address.sixtofour, *(address.teredo or ())]
        if address in _NAT64_NETWORK:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        if any(inner is not None and not is_public_address(inner) for inner in embedded):
            return False
        if any(address in network for network in _NOT_PUBLIC_NETWORKS):
            return False
    return address.is_global and not address.is_multicast


def host_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, or None when it is a name to resolve.

    Besides ``127.0.0.1`` and IPv6 literals (without brackets, as ``urlsplit`` gives them), this reads the
    numeric forms the C resolver takes for IPv4 addresses (``inet_aton``, which ``getaddrinfo`` tries before the
    DNS): ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, with or without a trailing dot.

    Raises:
        ValueError: the host ends in a number (so it is never looked up in the DNS) but is no address.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    name = host.removesuffix(".")
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        last = name.rpartition(".")[2].lower()
        if last.isdigit() or last.startswith("0x"):
            raise ValueError(host) from None
        return None


def private_target_problem(host: str) -> str | None:
    """Why a webhook may not target ``host`` when private targets are not allowed; None when it may.

    ``host`` is a URL's host as ``urlsplit`` gives it (lower case, IPv6 without brackets). Only what the host
    says literally is judged here: a name is resolved, and its addresses checked, when a delivery is sent.
    """
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        # RFC 6761: such names always mean this machine, whatever the DNS says.
        return f"{host} is this machine"
    try:
        address = host_address(host)
    except ValueError:
        return f"{host} is neither a host name nor a valid IP address"
    if address is not None and not is_public_address(address):
        named = host if host == str(address) else f"{host} (that is {address})"
        return f"{named} is not a public address (loopback, private, link-local, reserved or multicast)"
    return None


def validate_webhook_url(url: str, *, allow_private_targets: bool = False) -> str:
    """The URL, stripped, when it is an absolute http(s) URL without credentials or fragment.

    Unless ``allow_private_targets``, its host may not be ``localhost`` or a literal address that is not public
    (:func:`is_public_address`): the service would otherwise send signed requests into its own network.

    Raises:
        InvalidWebhookUrlError: it is not.
    """
    url = url.strip()
    if not url or len(url) > MAX_WEBHOOK_URL_LENGTH or any(character.isspace() for character in url):
        raise InvalidWebhookUrlError(f"A webhook URL is 1 to {MAX_WEBHOOK_URL_LENGTH} characters without spaces.")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise InvalidWebhookUrlError("The webhook URL is malformed.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidWebhookUrlError
    if parts.username is not None or parts.password is not None:
        # The URL is listed to every admin; the signature is how receivers authenticate the service.
        raise InvalidWebhookUrlError("A webhook URL may not contain credentials; verify the signature instead.")
    if parts.fragment:
        raise InvalidWebhookUrlError("A webhook URL may not contain a #fragment.")
    if port == 0:
        raise InvalidWebhookUrlError("The webhook URL's port is not valid.")
    if not allow_private_targets and (problem := private_target_problem(parts.hostname)) is not None:
        raise InvalidWebhookUrlError(f"Webhooks are only sent to public hosts: {problem}.")
    return url


def event_time(moment: datetime) -> str:
    """A time as webhook payloads write it, envelope and ``data`` alike: RFC 3339 in UTC with ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_event(event: OutboundEvent) -> bytes:
    """The JSON body delivered for ``event``: ``{id, type, created_at, conversation_id, data}``."""
    document = {
        "id": str(event.id),
        "type": event.type.value,
        "created_at": event_time(event.occurred_at),
        "conversation_id": None if event.conversation_id is None else str(event.conversation_id),
        "data": event.data,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed with the secret (UTF-8), as lowercase hex."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def delivery_headers(event_id: UUID, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt; docs/webhooks.md tells receivers how to check them."""
    return {
        "Content-Type": "application/json",
        "Webhook-Id": str(event_id),
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": f"{SIGNATURE_VERSION}={sign(secret, timestamp, body)}",
    }


def verify_signature(secret: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether a ``Webhook-Signature`` header holds a valid signature (one of its space-separated entries)."""
    expected = sign(secret, timestamp, body)
    for entry in header.split():
        version, _, signature = entry.partition("=")
        if version == SIGNATURE_VERSION and hmac.compare_digest(signature, expected):
            return True
    return False
