from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, FromQuery, JSONBody, QueryParameter

from support.api.auth import admin_only
from support.api.problems import problem_responses
from support.api.schemas.common import Metadata, PageCursor
from support.application.knowledge import (
    MAX_EXTERNAL_ID_LENGTH,
    MAX_PAGE_SIZE,
    MAX_QUERY_LENGTH,
    MAX_SEARCH_CONTEXT,
    MAX_SEARCH_LIMIT,
    MAX_TITLE_LENGTH,
    DeleteDocument,
    GetDocument,
    GetJob,
    IngestDocument,
    IngestRequest,
    ListDocuments,
    SearchKnowledge,
    StartBulkIngestion,
    file_external_id,
    file_title,
)
from support.domain.errors import InvalidInputError
from support.domain.injection import InjectionReason
from support.domain.knowledge import (
    DOCUMENT_URL_PATTERN,
    MAX_DOCUMENT_URL_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    Audience,
    Document,
    SearchQuery,
    UpsertStatus,
    uploaded_content_type,
)
from support.ports.jobs import JobState

ContentType = Literal["text/plain", "text/markdown", "text/html"]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG_LENGTH)]
# One rule for every way tags come in: a JSON body's list, and an upload form's comma-separated field (form_tags).
Tags = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]
# Customers see it as a citation link: only absolute http(s) URLs (validate_document_url checks the rest).
DocumentUrl = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_DOCUMENT_URL_LENGTH,
        pattern=DOCUMENT_URL_PATTERN,
        description=(
            "Where customers can read the document, shown as the link of its citations: an absolute `http://` or "
            "`https://` URL without credentials, or empty for none."
        ),
        examples=["https://help.example.com/articles/returns"],
    ),
]
MAX_TAGS_FIELD_LENGTH = MAX_TAGS * (MAX_TAG_LENGTH + 1)
# The upload form's field as the OpenAPI document states it, from the same numbers, so that a field the document
# calls valid is never refused. Documented only: what is enforced is Tags, once the field is split.
TAGS_FIELD_PATTERN = f"^[^,]{{0,{MAX_TAG_LENGTH}}}(,[^,]{{0,{MAX_TAG_LENGTH}}}){{0,{MAX_TAGS - 1}}}$"


class CreateDocumentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="The document's text, Markdown or HTML; whitespace alone is refused (`invalid_input`).",
            examples=["# Returns\n\nUnworn items can be returned within 30 days of delivery for a full refund."],
        ),
    ]
    content_type: ContentType = "text/markdown"
    title: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_TITLE_LENGTH,
                description="Defaults to the content's first heading; a document without either is refused.",
                examples=["Returns and refunds"],
            ),
        ]
        | None
    ) = None
    external_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_EXTERNAL_ID_LENGTH,
                description="Your id for the document: sending it again updates the same document.",
            ),
        ]
        | None
    ) = None
    url: DocumentUrl | None = None
    tags: Tags = msgspec.field(default_factory=list)
    audience: Audience = Audience.PUBLIC
    metadata: Metadata = msgspec.field(default_factory=dict)


class FlagResource(msgspec.Struct, frozen=True):
    reason: Annotated[
        InjectionReason,
        msgspec.Meta(description="Why the passage was flagged (docs/security.md lists the reasons)."),
    ]
    excerpt: Annotated[str, msgspec.Meta(description="The flagged passage with its sentence, on one line.")]
    chunk: Annotated[
        int | None,
        msgspec.Meta(
            description=(
                "The chunk (ordinal) whose indexed text (title > headings, a blank line, the body) holds the passage; "
                "null for text readers cannot see in the submitted content (an HTML comment, hidden styling, "
                "invisible characters)."
            )
        ),
    ]
    start: Annotated[
        int, msgspec.Meta(description="Character offset where the passage starts (in the chunk, else in the content).")
    ]
    end: Annotated[int, msgspec.Meta(description="Character offset just past the passage.")]


class DocumentResource(msgspec.Struct, frozen=True):
    id: UUID
    external_id: str
    title: str
    content_type: str
    url: str | None
    tags: list[str]
    audience: Audience
    metadata: dict[str, str]
    version: int
    chunk_count: int
    content_hash: str
    flags: Annotated[
        list[FlagResource],
        msgspec.Meta(
            description=(
                "Passages that read as instructions to an AI or are hidden from readers (prompt-injection risk). "
                "They stay data; with SUPPORT_KNOWLEDGE__INJECTION_POLICY=quarantine flagged chunks are left out of "
                "the assistant's searches."
            )
        ),
    ]
    created_at: datetime
    updated_at: datetime


class IngestResponse(msgspec.Struct, frozen=True):
    status: UpsertStatus
    document: DocumentResource


class DocumentList(msgspec.Struct, frozen=True):
    items: list[DocumentResource]
    next_cursor: str | None


class SearchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_LENGTH)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEARCH_LIMIT)] = 5
    tags: Tags = msgspec.field(default_factory=list)
    audiences: list[Audience] = msgspec.field(default_factory=lambda: [Audience.PUBLIC])
    context: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_SEARCH_CONTEXT,
            description="Chunks of each hit's document to return with it, on each side (`context` of a hit).",
        ),
    ] = 0


class ContextChunkResource(msgspec.Struct, frozen=True):
    chunk_id: UUID
    chunk: int
    heading_path: list[str]
    text: str
    flags: list[InjectionReason]


class SearchHitResource(msgspec.Struct, frozen=True):
    document_id: UUID
    external_id: str
    version: int
    chunk_id: UUID
    chunk: int
    title: str
    url: str | None
    heading_path: list[str]
    text: str
    score: float
    vector_similarity: float | None
    vector_rank: int | None
    text_rank: int | None
    flags: Annotated[list[InjectionReason], msgspec.Meta(description="Why this chunk was flagged, if it was.")]
    context: Annotated[
        list[ContextChunkResource],
        msgspec.Meta(description="The chunks around this one in its document version, in order (see `context`)."),
    ]


class SearchResponse(msgspec.Struct, frozen=True):
    items: list[SearchHitResource]


class JobResource(msgspec.Struct, frozen=True):
    id: str
    kind: str
    status: Annotated[str, msgspec.Meta(description="queued, active, complete, failed or aborted")]
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)]
    detail: dict[str, Any]
    error: str | None


def job_resource(state: JobState) -> JobResource:
    return JobResource(
        id=state.id,
        kind=state.kind,
        status=state.status,
        progress=state.progress,
        detail=dict(state.detail),
        error=state.error,
    )


class UploadForm(msgspec.Struct):
    file: UploadFile
    external_id: Annotated[str, msgspec.Meta(max_length=MAX_EXTERNAL_ID_LENGTH)] | None = None
    title: Annotated[str, msgspec.Meta(max_length=MAX_TITLE_LENGTH)] | None = None
    # A form has no null: an empty field is no url (a nullable one would be documented as accepting "null").
    url: DocumentUrl = ""
    # Held to the JSON body's rule (Tags) once split, by form_tags.
    tags: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_TAGS_FIELD_LENGTH,
                description=f"Comma-separated: at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each.",
                extra_json_schema={"pattern": TAGS_FIELD_PATTERN},
            ),
        ]
        | None
    ) = None
    audience: Audience = Audience.PUBLIC


# The form's fields for one document, and what each is called on a line of a .jsonl file, which holds many.
_DOCUMENT_FORM_FIELDS = {"external_id": "id", "title": "title", "url": "url", "tags": "tags", "audience": "audience"}


async def refuse_document_fields(request: Request[Any, Any, Any]) -> None:
    """Refuse the form's per-document fields for a .jsonl upload: its documents take theirs from their lines.

    A field counts as given when it is sent with a value (an empty field, as a browser form sends it, is none);
    ``audience=public`` is given too, though it is the default. Not a shape error (``validation_failed``): the
    form is valid by the document, and only the file's name makes the fields meaningless.

    Raises:
        InvalidInputError: one or more were given; the message names each.
    """
    form = await request.form()  # parsed once for the body, and kept
    given = [
        line if name == line else f"{line} (the form's {name})"
        for name, line in _DOCUMENT_FORM_FIELDS.items()
        if any(str(value).strip() for value in form.getall(name, []))
    ]
    if given:
        raise InvalidInputError(f"For a .jsonl file, give {', '.join(given)} on each line, not in the form.")


def form_tags(field: str | None) -> list[str]:
    """An upload form's comma-separated tags, held to the JSON body's rule (``Tags``).

    Raises:
        ValidationException: too many tags or one too long; a 422 ``validation_failed`` at ``$.tags``, as the
            JSON body's would be.
    """
    tags = [tag.strip() for tag in (field or "").split(",") if tag.strip()]
    try:
        return msgspec.convert(tags, Tags)
    except msgspec.ValidationError as error:
        message, _, at = str(error).partition(" - at `$")
        problem = {"message": message, "key": "tags" + at.rstrip("`"), "source": "body"}
        raise ValidationException("The request has invalid fields.", extra=[problem]) from None


def document_resource(document: Document) -> DocumentResource:
    return DocumentResource(
        id=document.id,
        external_id=document.external_id,
        title=document.title,
        content_type=document.content_type,
        url=document.url,
        tags=list(document.tags),
        audience=document.audience,
        metadata=dict(document.metadata),
        version=document.version,
        chunk_count=document.chunk_count,
        content_hash=document.fingerprint,
        flags=[
            FlagResource(reason=flag.reason, excerpt=flag.excerpt, chunk=flag.chunk, start=flag.start, end=flag.end)
            for flag in document.flags
        ],
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


def _ingest_response(document: Document, status: UpsertStatus) -> Response[IngestResponse | JobResource]:
    return Response(
        IngestResponse(status=status, document=document_resource(document)),
        status_code=201 if status is UpsertStatus.CREATED else 200,
    )


class KnowledgeController(Controller):
    path = "/v1/knowledge"
    tags = ["knowledge"]  # noqa: RUF012
    guards = [admin_only]  # noqa: RUF012

    @post(
        "/documents",
        operation_id="UpsertDocument",
        summary="Create or update a document",
        description=(
            "Creates the document, or updates the one with the same `external_id`: 201 when created, 200 when "
            "updated (new version) or unchanged (same content; nothing is re-embedded)."
        ),
        responses={
            200: ResponseSpec(IngestResponse, description="Updated, or unchanged", generate_examples=False),
            201: ResponseSpec(IngestResponse, description="Created", generate_examples=False),
            **problem_responses(400, 401, 403, 413, 415, 422),
        },
        status_code=200,
    )
    @inject
    async def upsert(
        self, data: JSONBody[CreateDocumentRequest], use_case: FromDishka[IngestDocument]
    ) -> Response[IngestResponse | JobResource]:
        result = await use_case.execute(
            IngestRequest(
                content=data.content.encode(),
                content_type=data.content_type,
                external_id=data.external_id,
                title=data.title,
                url=data.url,
                tags=data.tags,
                audience=data.audience,
                metadata=data.metadata,
            )
        )
        return _ingest_response(result.document, result.status)

    @post(
        "/uploads",
        operation_id="UploadDocument",
        summary="Upload a file as a document",
        description=(
            "Multipart upload of a .txt, .md, .html or .pdf file (the file name gives the type): 201/200 with the "
            "document. Without `external_id` the file name is the document's id, so a later upload of a file of the "
            "same name updates that document (give distinct ids to distinct files that share a name). A .jsonl file "
            "of `{id, text, title?, url?, tags?, content_type?, audience?, metadata?}` "
            "lines is checked line by line (`invalid_input` naming the line and field) and ingested in the "
            "background: 202 with a job to follow at `GET /v1/knowledge/jobs/{id}`. With a .jsonl file the form's "
            "`external_id`, `title`, `url`, `tags` and `audience` are refused (`invalid_input`): each line gives "
            "its own."
        ),
        responses={
            200: ResponseSpec(IngestResponse, description="Updated, or unchanged", generate_examples=False),
            201: ResponseSpec(IngestResponse, description="Created", generate_examples=False),
            202: ResponseSpec(JobResource, description="Bulk ingestion queued", generate_examples=False),
            **problem_responses(400, 401, 403, 413, 415, 422),
        },
        status_code=200,
    )
    @inject
    async def upload(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
        use_case: FromDishka[IngestDocument],
        bulk: FromDishka[StartBulkIngestion],
    ) -> Response[IngestResponse | JobResource]:
        tags = form_tags(data.tags)
        content = await data.file.read()
        if (data.file.filename or "").lower().endswith(".jsonl"):
            await refuse_document_fields(request)
            return Response(job_resource(await bulk.execute(content)), status_code=202)
        content_type = uploaded_content_type(data.file.filename or "", data.file.content_type)
        result = await use_case.execute(
            IngestRequest(
                content=content,
                content_type=content_type,
                # A blank field is a field not given (a form has no null): the file names the document.
                external_id=(data.external_id or "").strip() or file_external_id(data.file.filename or ""),
                title=(data.title or "").strip() or None,
                fallback_title=file_title(data.file.filename or ""),
                url=data.url,
                tags=tags,
                audience=data.audience,
            )
        )
        return _ingest_response(result.document, result.status)

    @get(
        "/jobs/{job_id:str}",
        operation_id="GetJob",
        summary="Follow a background job",
        description="Status, progress (0..1) and counts so far; a finished job stays readable for a day.",
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def get_job(self, job_id: FromPath[str], use_case: FromDishka[GetJob]) -> JobResource:
        return job_resource(await use_case.execute(job_id))

    @get(
        "/documents",
        operation_id="ListDocuments",
        summary="List documents",
        responses=problem_responses(401, 403, 422),
    )
    @inject
    async def list_documents(
        self,
        use_case: FromDishka[ListDocuments],
        tag: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> DocumentList:
        page = await use_case.execute(tag=tag, limit=limit, cursor=cursor)
        return DocumentList(items=[document_resource(doc) for doc in page.items], next_cursor=page.next_cursor)

    @get(
        "/documents/{document_id:uuid}",
        operation_id="GetDocument",
        summary="Read a document",
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def get_document(self, document_id: FromPath[UUID], use_case: FromDishka[GetDocument]) -> DocumentResource:
        return document_resource(await use_case.execute(document_id))

    @delete(
        "/documents/{document_id:uuid}",
        operation_id="DeleteDocument",
        summary="Delete a document",
        description="The document leaves search results at once.",
        status_code=204,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def delete_document(self, document_id: FromPath[UUID], use_case: FromDishka[DeleteDocument]) -> None:
        await use_case.execute(document_id)

    @post(
        "/search",
        operation_id="SearchKnowledge",
        summary="Search the knowledge base",
        description="Hybrid retrieval (vector + full text, fused by reciprocal rank): the best passage per document.",
        responses=problem_responses(400, 401, 403, 422),
        status_code=200,
    )
    @inject
    async def search(self, data: JSONBody[SearchRequest], use_case: FromDishka[SearchKnowledge]) -> SearchResponse:
        hits = await use_case.execute(
            SearchQuery(
                text=data.query,
                limit=data.limit,
                tags=tuple(data.tags),
                audiences=tuple(data.audiences),
                context=data.context,
            )
        )
        return SearchResponse(
            items=[
                SearchHitResource(
                    document_id=hit.document_id,
                    external_id=hit.external_id,
                    version=hit.version,
                    chunk_id=hit.chunk_id,
                    chunk=hit.ordinal,
                    title=hit.title,
                    url=hit.url,
                    heading_path=list(hit.heading_path),
                    text=hit.text,
                    score=hit.score,
                    vector_similarity=hit.vector_similarity,
                    vector_rank=hit.vector_rank,
                    text_rank=hit.text_rank,
                    flags=list(hit.flags),
                    context=[
                        ContextChunkResource(
                            chunk_id=chunk.chunk_id,
                            chunk=chunk.ordinal,
                            heading_path=list(chunk.heading_path),
                            text=chunk.text,
                            flags=list(chunk.flags),
                        )
                        for chunk in hit.context
                    ],
                )
                for hit in hits
            ]
        )
