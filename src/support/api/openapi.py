"""What the OpenAPI document says beyond what each route handler declares.

:func:`complete_openapi_document` runs once when the app is built, before the document is first served:

- every operation lists the problems that any operation of its kind can answer with (:func:`shared_problems`), so
  a handler declares only its own (404, 409, ...);
- operations without a guard say ``security: []``: the document's default is the bearer key, and Litestar omits
  an empty requirement list;
- request bodies say what msgspec enforces and Litestar's generator leaves out: ``additionalProperties: false``
  for structs that forbid unknown fields, and the limits of list items and of dict keys, values and sizes; and a
  field's ``msgspec.Meta(extra_json_schema={"pattern": ...})``, for a limit the handler enforces itself (an upload
  form's comma-separated tags).

:func:`document_event_stream` describes server-sent events as they are on the wire, for the operation classes of
streaming handlers.

The Schemathesis run (tests/api/test_openapi_fuzz.py) holds every response to this document.
"""

from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Annotated, Any, get_args, get_origin

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from support.api.problems import PROBLEM_MEDIA_TYPE, ProblemDetails

EVENT_STREAM = "text/event-stream"
# Any operation: a bug (logged with the request id).
ALWAYS = (500,)
# Operations with parameters or a body: one the server cannot read (400).
WITH_INPUT = (400,)
# Operations with a body: over the size limit (413).
WITH_BODY = (413,)
# Operations behind a role guard: no or an unknown credential (401), a role that may not (403), over a rate limit
# (429), and the key store or a backing service down (503).
GUARDED = (401, 403, 429, 503)


def shared_problems(*, guarded: bool, has_input: bool, has_body: bool) -> tuple[int, ...]:
    """The problem statuses an operation of this kind can answer with, whatever it does."""
    statuses = [*ALWAYS]
    if has_input:
        statuses += WITH_INPUT
    if has_body:
        statuses += WITH_BODY
    if guarded:
        statuses += GUARDED
    return tuple(sorted(statuses))


def complete_openapi_document(app: Litestar) -> None:
    """Generate the app's OpenAPI document now and complete it in place (see the module docstring)."""
    document = app.openapi_schema
    problem = _problem_schema(document)
    for handler, operation in _operations(app, document):
        guarded = bool(handler.resolve_guards())
        statuses = shared_problems(
            guarded=guarded,
            has_input=bool(operation.parameters or operation.request_body),
            has_body=operation.request_body is not None,
        )
        responses = operation.responses if operation.responses is not None else {}
        for status in statuses:
            existing = responses.get(str(status))
            # Litestar adds its own 400 body shape to operations with inputs; ours is a problem document.
            if existing is None or (status == HTTPStatus.BAD_REQUEST and not _is_problem(existing)):
                responses[str(status)] = _problem_response(status, problem)
        operation.responses = responses
        if guarded:
            _add_rate_limit_headers(responses)
        else:
            operation.security = []
    for struct in _request_structs(app):
        _tighten(document, struct)


def _operations(app: Litestar, document: OpenAPI) -> Iterator[tuple[HTTPRouteHandler, Operation]]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or document.paths is None:
            continue
        path_item = document.paths.get(route.path_format)
        if path_item is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield handler, operation


def _problem_schema(document: OpenAPI) -> Reference:
    name = ProblemDetails.__name__
    if name not in document.components.schemas:
        msg = f"no operation declares a {name} response: use support.api.problems.problem_responses"
        raise RuntimeError(msg)
    return Reference(ref=f"#/components/schemas/{name}")


# Every counted response carries the caller's standing against its rate limits (docs/limits.md); absent when
# limits are switched off.
_RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING),
        description='The policies the request was counted against, e.g. `"customer";q=60;w=60, "ip";q=120;w=60`.',
    ),
    "RateLimit": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING),
        description="What each policy still allows now (`r`) and the seconds until one more unit accrues (`t`), "
        'e.g. `"customer";r=57;t=1, "ip";r=118;t=1`.',
    ),
}
_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0), description="Seconds to wait before trying again."
)


def _add_rate_limit_headers(responses: dict[str, OpenAPIResponse | Reference]) -> None:
    for status, response in responses.items():
        if not isinstance(response, OpenAPIResponse):
            continue
        refused = status == str(HTTPStatus.TOO_MANY_REQUESTS.value)
        if status.startswith("2") or refused:
            headers = {**(response.headers or {}), **_RATE_LIMIT_HEADERS}
            if refused:
                headers["Retry-After"] = _RETRY_AFTER
            response.headers = headers


def _problem_response(status: int, schema: Reference) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=HTTPStatus(status).phrase, content={PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=schema)}
    )


def _is_problem(response: OpenAPIResponse | Reference) -> bool:
    return isinstance(response, OpenAPIResponse) and PROBLEM_MEDIA_TYPE in (response.content or {})


def _request_structs(app: Litestar) -> set[type[msgspec.Struct]]:
    """Every struct a request body is decoded into, nested ones included."""
    found: set[type[msgspec.Struct]] = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                _collect_structs(data.annotation, found)
    return found


def _collect_structs(annotation: Any, found: set[type[msgspec.Struct]]) -> None:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        if annotation not in found:
            found.add(annotation)
            for field in msgspec.structs.fields(annotation):
                _collect_structs(field.type, found)
        return
    # Annotated (its metadata aside), unions and containers.
    args = get_args(annotation)
    for arg in args[:1] if get_origin(annotation) is Annotated else args:
        _collect_structs(arg, found)


def _tighten(document: OpenAPI, struct: type[msgspec.Struct]) -> None:
    component = document.components.schemas.get(struct.__name__)
    if not isinstance(component, Schema):
        return
    if struct.__struct_config__.forbid_unknown_fields:
        component.additional_properties = False
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)  # noqa: S101 - type_info of a Struct type
    for field in info.fields:
        prop = (component.properties or {}).get(field.encode_name)
        if isinstance(prop, Schema):
            _constrain_containers(prop, field.type)
            _documented_pattern(prop, field.type)


def _documented_pattern(prop: Schema, type_info: msgspec.inspect.Type) -> None:
    """A ``pattern`` from the field's ``extra_json_schema``, beside its length limits (Litestar drops it)."""
    if isinstance(type_info, msgspec.inspect.UnionType):
        for member in type_info.types:
            _documented_pattern(prop, member)
    elif isinstance(type_info, msgspec.inspect.Metadata) and "pattern" in (type_info.extra_json_schema or {}):
        prop.pattern = str((type_info.extra_json_schema or {})["pattern"])


def _constrain_containers(prop: Schema, type_info: msgspec.inspect.Type) -> None:
    """The limits of list items, and of dict keys, values and size, on a field's schema (or its union branches)."""
    if isinstance(type_info, msgspec.inspect.Metadata):
        _constrain_containers(prop, type_info.type)
        return
    if isinstance(type_info, msgspec.inspect.UnionType):
        for member in type_info.types:
            _constrain_containers(prop, member)
        return
    for schema in [prop, *(branch for branch in prop.one_of or () if isinstance(branch, Schema))]:
        if isinstance(type_info, msgspec.inspect.ListType) and isinstance(schema.items, Schema):
            _string_limits(schema.items, type_info.item_type)
        elif isinstance(type_info, msgspec.inspect.DictType) and schema.type == OpenAPIType.OBJECT:
            schema.min_properties = type_info.min_length
            schema.max_properties = type_info.max_length
            key = Schema(type=OpenAPIType.STRING)
            if _string_limits(key, type_info.key_type):
                schema.property_names = key
            if isinstance(schema.additional_properties, Schema):
                _string_limits(schema.additional_properties, type_info.value_type)


def _string_limits(schema: Schema, type_info: msgspec.inspect.Type) -> bool:
    """Copy a string type's length and pattern limits onto ``schema``; whether it has any."""
    if isinstance(type_info, msgspec.inspect.Metadata):
        type_info = type_info.type
    if not isinstance(type_info, msgspec.inspect.StrType):
        return False
    schema.min_length = type_info.min_length
    schema.max_length = type_info.max_length
    schema.pattern = type_info.pattern
    return any(limit is not None for limit in (type_info.min_length, type_info.max_length, type_info.pattern))


def document_event_stream(operation: Operation, events: Iterable[type[msgspec.Struct]]) -> None:
    """Describe the 200 ``text/event-stream`` response of ``operation`` event by event, as it is on the wire.

    ``events`` are tagged structs (``event`` is the tag) with a ``data`` field: in the stream ``data`` is a string
    of JSON, so it is documented as ``contentMediaType: application/json`` with the field's component as
    ``contentSchema``. ``id`` is the event's sequence number; events that are not retained carry none.
    """
    ok = (operation.responses or {}).get("200")
    media = ok.content.get(EVENT_STREAM) if isinstance(ok, OpenAPIResponse) and ok.content else None
    if media is None:
        msg = f"{operation.operation_id} has no 200 {EVENT_STREAM} response to describe"
        raise RuntimeError(msg)
    media.schema = Schema(one_of=[_event_schema(event) for event in events])


def _event_schema(event: type[msgspec.Struct]) -> Schema:
    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)  # noqa: S101 - type_info of a Struct type
    data = next(field for field in info.fields if field.name == "data")
    assert isinstance(data.type, msgspec.inspect.StructType)  # noqa: S101 - every event's data is a struct
    return Schema(
        type=OpenAPIType.OBJECT,
        title=event.__name__,
        description=event.__doc__,
        required=["event", "data"],
        properties={
            "event": Schema(type=OpenAPIType.STRING, const=info.tag),
            "id": Schema(type=OpenAPIType.STRING, pattern="^[0-9]+$"),
            "data": Schema(
                type=OpenAPIType.STRING,
                content_media_type="application/json",
                content_schema=Reference(ref=f"#/components/schemas/{data.type.cls.__name__}"),
            ),
        },
    )
