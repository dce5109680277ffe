"""Sends webhook deliveries with httpx."""

import asyncio
from collections.abc import Mapping

import httpx

from support.ports.webhooks import SendResult

_MAX_ERROR_CHARS = 500


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:_MAX_ERROR_CHARS]


class HttpxWebhookSender:
    """One connection pool for every endpoint; each POST has ``timeout_s`` in total, however the endpoint stalls.

    Redirects are not followed (a 3xx is a failed attempt): the signed request goes to the registered URL only.
    """

    def __init__(self, *, timeout_s: float, user_agent: str = "support-webhooks") -> None:
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, headers={"User-Agent": user_agent})

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        try:
            # httpx's timeout bounds each read; this bounds the whole exchange (an endpoint trickling bytes).
            async with asyncio.timeout(self._timeout_s):
                request = self._client.build_request("POST", url, content=body, headers=dict(headers))
                response = await self._client.send(request, stream=True)
                # Only the status matters; the body is not read, so a huge or endless one costs nothing.
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return SendResult(None, f"no answer within {self._timeout_s:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return SendResult(None, _describe(error))
        return SendResult(response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()
