"""Sends webhook deliveries with httpx, to public addresses only unless private targets are allowed."""

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping

import httpcore
import httpx

from support.domain.webhooks import IPAddress, is_public_address
from support.ports.webhooks import SendResult

_MAX_ERROR_CHARS = 500

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:_MAX_ERROR_CHARS]


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to for a TCP connection, in the resolver's order, without repeats.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: dict[IPAddress, None] = {}
    for _family, _type, _proto, _canonical, sockaddr in infos:
        addresses[ipaddress.ip_address(sockaddr[0])] = None
    return list(addresses)


class PrivateTargetError(Exception):
    """A webhook's host is, or resolves to, an address that is not public; nothing was sent."""

    def __init__(self, host: str, address: IPAddress) -> None:
        named = host if host == str(address) else f"{host} resolves to {address}, which"
        super().__init__(f"not sent: {named} is not a public address (private targets are not allowed)")


class PublicAddressBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving each host once and connecting only to addresses that are public.

    The check and the connection use the same resolved addresses: the socket connects to the address that was
    checked, never to a name that a second lookup could answer differently (DNS rebinding). TLS still verifies
    the certificate against the URL's host name, which httpcore passes as the server name separately.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None, resolver: Resolver = resolve) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, refuse it when any of its addresses is not public, else connect to the first that answers.

        Raises:
            PrivateTargetError: an address is not public.
            httpcore.ConnectError: the name does not resolve, or no address accepts the connection.
            httpcore.ConnectTimeout: resolving or connecting took longer than ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from error
        except OSError as error:
            raise httpcore.ConnectError(str(error)) from error
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        # Every address, not only the first: a name that also resolves to an internal address is refused outright.
        for address in addresses:
            if not is_public_address(address):
                raise PrivateTargetError(host, address)
        errors: list[Exception] = []
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                errors.append(error)
        raise errors[-1]

    async def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does (httpcore's retries use it)."""
        await self._inner.sleep(seconds)


class _PublicAddressTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, errors, pooling), over a pool that connects through the guard."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        super().__init__()
        limits = httpx.Limits()  # httpx's defaults, as the replaced pool had them
        # httpx takes no network backend; the pool it built is replaced by the same pool with one. The delivery
        # tests (a name resolving to 127.0.0.1 is refused) fail if a future httpx stops using this attribute.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class HttpxWebhookSender:
    """One connection pool for every endpoint; each POST has ``timeout_s`` in total, however the endpoint stalls.

    Redirects are not followed (a 3xx is a failed attempt): the signed request goes to the registered URL only.
    Unless ``allow_private_targets``, every new connection resolves the host, refuses it when any address is not
    public (:func:`support.domain.webhooks.is_public_address`) and connects to the checked address; such an
    attempt fails with a ``not sent: …`` error and nothing leaves the process. The check connects directly, so
    ``HTTP(S)_PROXY`` variables are not used then.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private_targets: bool = False,
        user_agent: str = "support-webhooks",
        resolver: Resolver = resolve,
    ) -> None:
        self._timeout_s = timeout_s
        transport = None if allow_private_targets else _PublicAddressTransport(PublicAddressBackend(resolver=resolver))
        self._client = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, headers={"User-Agent": user_agent}, transport=transport
        )

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST ``body`` to ``url``; the answer's status, or why there was none (a timeout, a refused target)."""
        try:
            # httpx's timeout bounds each read; this bounds the whole exchange (an endpoint trickling bytes).
            async with asyncio.timeout(self._timeout_s):
                request = self._client.build_request("POST", url, content=body, headers=dict(headers))
                response = await self._client.send(request, stream=True)
                # Only the status matters; the body is not read, so a huge or endless one costs nothing.
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return SendResult(None, f"no answer within {self._timeout_s:g} s")
        except PrivateTargetError as error:
            return SendResult(None, str(error)[:_MAX_ERROR_CHARS])
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return SendResult(None, _describe(error))
        return SendResult(response.status_code)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
