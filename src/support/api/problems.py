"""RFC 9457 problem responses, and the one table that maps errors to HTTP status codes."""

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from support.domain.errors import (
    AuthenticationError,
    ConflictError,
    ContentTooLargeError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RuleViolationError,
    SupportError,
    UnsupportedContentTypeError,
)
from support.domain.limits import TooManyRequestsError
from support.ports.errors import DependencyUnavailableError, LLMUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 2

_logger = logging.getLogger("support.api")

STATUS_BY_ERROR: Mapping[type[SupportError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    RuleViolationError: 409,
    InvalidInputError: 422,
    UnsupportedContentTypeError: 415,
    ContentTooLargeError: 413,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    TooManyRequestsError: 429,
    LLMUnavailableError: 502,
    DependencyUnavailableError: 503,
}

# Codes for errors raised by the framework itself, by status.
_HTTP_CODES: Mapping[int, str] = {
    # Litestar answers 400 itself only for bodies it cannot decode.
    400: "malformed_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "content_too_large",
    415: "unsupported_content_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class FieldError(msgspec.Struct, frozen=True):
    """One invalid input: where it is and what is wrong."""

    location: str
    message: str
    source: str | None = None


class ProblemDetails(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem. ``code`` is stable and machine-readable; ``type`` points at its documentation."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


def problem_type(code: str) -> str:
    """A stable URI per problem code; docs/errors.md lists them all."""
    return f"urn:support:problem:{code}"


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str | None,
    *,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[ProblemDetails]:
    body = ProblemDetails(
        type=problem_type(code),
        title=HTTPStatus(status).phrase,
        status=status,
        code=code,
        detail=detail,
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {}))


def status_for(error: SupportError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


def handle_support_error(request: Request[Any, Any, Any], error: SupportError) -> Response[ProblemDetails]:
    status = status_for(error)
    headers: dict[str, str] = {}
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="support"'
    if isinstance(error, TooManyRequestsError):
        headers["Retry-After"] = str(error.retry_after_s)
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_S)
        _logger.warning("dependency unavailable: %s", error.code, exc_info=error.__cause__ or error)
    return problem_response(request, status, error.code, error.message, headers=headers)


def handle_validation_error(request: Request[Any, Any, Any], error: ValidationException) -> Response[ProblemDetails]:
    messages: list[dict[str, Any]] = [item for item in (error.extra or []) if isinstance(item, dict)]
    if any(item.get("key") == "data" and item.get("message") == "'data'" for item in messages):
        # A required body that is empty: Litestar reads it as a missing argument named 'data' (its KeyError).
        return problem_response(request, 400, "malformed_request", "The request body is empty: send a JSON object.")
    malformed = [item for item in messages if "malformed" in str(item.get("message", "")).lower()]
    if malformed or not messages:
        detail = str(malformed[0]["message"]) if malformed else error.detail
        return problem_response(request, 400, "malformed_request", detail)
    errors = [
        FieldError(
            location=_location(item),
            message=str(item.get("message", "invalid value")),
            source=_source(item) if item.get("source") else None,
        )
        for item in messages
    ]
    return problem_response(request, 422, "validation_failed", "The request has invalid fields.", errors=errors)


def _location(item: Mapping[str, Any]) -> str:
    """``$.role``-style paths for body fields; ``query.limit``-style for parameters."""
    key = str(item.get("key", "data"))
    source = _source(item)
    if source == "body":
        return "$" if key == "data" else f"$.{key}"
    if source == "header":
        # Litestar names the handler's argument (idempotency_key), not the header the client sent.
        key = key.replace("_", "-")
    return f"{source}.{key}"


def _source(item: Mapping[str, Any]) -> str:
    """Where the bad value came from (``body``, ``query``, ``path``, ``header``): Litestar gives an enum member."""
    source = item.get("source", "body")
    return str(getattr(source, "value", source))


def handle_http_exception(request: Request[Any, Any, Any], error: HTTPException) -> Response[ProblemDetails]:
    status = error.status_code
    code = _HTTP_CODES.get(status, "http_error")
    detail = error.detail if status < HTTPStatus.INTERNAL_SERVER_ERROR else HTTPStatus(status).description
    headers = dict(error.headers or {})
    if isinstance(error, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer realm="support"')
    return problem_response(request, status, code, detail, headers=headers)


class DecodingRequest(Request[Any, Any, Any]):
    """A request whose JSON body nested past the decoder's recursion limit is a 400 problem, not a 500.

    Litestar turns a JSON syntax error into a validation error but lets ``RecursionError`` escape. It is caught
    here, where it can only come from the client's body; bytes that are not UTF-8, in a JSON body or a form field,
    reach :func:`handle_undecodable_text`.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ValidationException("The request body is nested too deeply to decode.") from None


def handle_undecodable_text(request: Request[Any, Any, Any], error: UnicodeDecodeError) -> Response[ProblemDetails]:
    """Request bytes that are not UTF-8 (Litestar decodes JSON bodies and multipart fields itself)."""
    _logger.info("undecodable request text on %s %s: %s", request.method, request.url.path, error)
    return problem_response(request, 400, "malformed_request", "The request body is not valid UTF-8.")


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ProblemDetails]:
    _logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem_response(request, 500, "internal_error", "An unexpected error occurred; it has been logged.")


class ReplyFailedError(Exception):
    """A send whose message is stored but whose reply failed: answered with the turn's own problem."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def handle_reply_failed(request: Request[Any, Any, Any], error: ReplyFailedError) -> Response[ProblemDetails]:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == HTTPStatus.SERVICE_UNAVAILABLE else {}
    return problem_response(request, error.status, error.code, error.detail, headers=headers)


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    ReplyFailedError: handle_reply_failed,
    SupportError: handle_support_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    UnicodeDecodeError: handle_undecodable_text,
    Exception: handle_unexpected,
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problems an operation can answer with."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=HTTPStatus(status).phrase,
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }
