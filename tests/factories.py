"""Test data factories, in one place."""

from polyfactory.factories import DataclassFactory
from polyfactory.factories.msgspec_factory import MsgspecFactory

from support.api.controllers.keys import CreateApiKeyRequest
from support.domain.identity import ApiKey


class ApiKeyFactory(DataclassFactory[ApiKey]):
    revoked_at = None


class CreateApiKeyRequestFactory(MsgspecFactory[CreateApiKeyRequest]):
    pass
