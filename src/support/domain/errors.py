"""Domain errors: each has a stable machine-readable ``code`` that the API turns into a problem type."""

from typing import ClassVar


class SupportError(Exception):
    """Base of every expected failure; never surfaces as a 500."""

    code: ClassVar[str] = "support_error"
    default_message: ClassVar[str] = "The request could not be completed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        """Human-readable detail, safe to show to the caller."""
        return str(self)


class NotFoundError(SupportError):
    """The addressed resource does not exist, or the caller may not know that it exists."""

    code = "not_found"
    default_message = "The resource was not found."


class ConflictError(SupportError):
    """The request conflicts with the current state of the resource."""

    code = "conflict"
    default_message = "The request conflicts with the current state."


class RuleViolationError(SupportError):
    """The request is well-formed but breaks a business rule."""

    code = "rule_violation"
    default_message = "The request breaks a business rule."


class InvalidInputError(SupportError):
    """The input cannot be processed (e.g. empty content, a corrupt file)."""

    code = "invalid_input"
    default_message = "The input cannot be processed."


class UnsupportedContentTypeError(SupportError):
    """The content type is not one the service accepts."""

    code = "unsupported_content_type"
    default_message = "This content type is not supported."


class ContentTooLargeError(SupportError):
    """The content exceeds a configured size limit."""

    code = "content_too_large"
    default_message = "The content is larger than allowed."


class AuthenticationError(SupportError):
    """No valid credentials were presented."""

    code = "unauthenticated"
    default_message = "A valid API key or customer token is required."


class PermissionDeniedError(SupportError):
    """The credentials are valid but do not allow this operation."""

    code = "forbidden"
    default_message = "These credentials do not allow this operation."


class ApiKeyNotFoundError(NotFoundError):
    """No API key with this id exists."""

    code = "api_key_not_found"
    default_message = "The API key was not found."
