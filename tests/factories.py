"""Test data factories, in one place."""

from polyfactory import Use
from polyfactory.factories import DataclassFactory
from polyfactory.factories.msgspec_factory import MsgspecFactory

from support.api.controllers.keys import CreateApiKeyRequest
from support.domain.identity import KEY_ROLES, ApiKey


class ApiKeyFactory(DataclassFactory[ApiKey]):
    revoked_at = None
    # Keys never hold the customer role (customer tokens do); the database refuses it.
    role = Use(DataclassFactory.__random__.choice, KEY_ROLES)


class CreateApiKeyRequestFactory(MsgspecFactory[CreateApiKeyRequest]):
    pass
