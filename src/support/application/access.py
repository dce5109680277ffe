"""Checking again that the caller of a long-lived feed or socket may still read its conversation."""

from uuid import UUID

from support.application.conversations import CachedConversationState
from support.application.keys import AuthenticateApiKey
from support.domain.identity import Principal


class ConfirmFollowerAccess:
    """Whether the credentials a feed or socket opened with still reach its conversation.

    A request is authorized once, but a live feed or a WebSocket stays open for hours: meanwhile its API key can be
    revoked, its customer token expire, or its customer be erased. The connection asks again from time to time
    and before every message it sends, and ends when the answer is no.
    """

    def __init__(self, authenticate: AuthenticateApiKey, state: CachedConversationState) -> None:
        self._authenticate = authenticate
        self._state = state

    async def execute(self, secret: str, conversation_id: UUID) -> Principal:
        """The principal ``secret`` still stands for, once it may still read the conversation.

        Raises:
            AuthenticationError: the key was revoked or the customer token has expired.
            ConversationNotFoundError: the conversation is gone (its customer was erased) or not the caller's.
        """
        principal = await self._authenticate.execute(secret)
        await self._state.execute(principal, conversation_id)
        return principal
