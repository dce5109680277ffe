"""Ingestion skips unchanged documents, unless the model their vectors came from has changed; it checks urls."""

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application import knowledge as knowledge_module
from support.application.knowledge import (
    BULK_GROUP_DOCUMENTS,
    OUTAGE_GIVE_UP_S,
    IngestDocument,
    IngestDocuments,
    IngestRequest,
    KnowledgeLimits,
    RunBulkIngestion,
    check_request,
    parse_jsonl_lines,
)
from support.cli.sources import count_sources, iter_sources
from support.domain.chunking import chunk_document
from support.domain.errors import InvalidInputError
from support.domain.knowledge import Audience, UpsertStatus
from support.ports.errors import EmbedderUnavailableError


class RenamedModel(HashingEmbedder):
    """The same vectors under another model id: what an embedder upgrade looks like to ingestion."""

    @property
    def model_id(self) -> str:
        return "another-model"


ARTICLE = IngestRequest(
    content=b"# Refunds\n\nRefunds reach your card within five business days.",
    content_type="text/markdown",
    external_id="refunds",
)


def ingestion(knowledge: InMemoryKnowledgeBase, embedder: HashingEmbedder) -> IngestDocument:
    return IngestDocument(
        knowledge, StructuredTextExtractor(), embedder, InMemoryUnitOfWork(), FixedClock(), KnowledgeLimits()
    )


async def test_the_same_content_under_the_same_model_is_left_alone() -> None:
    knowledge = InMemoryKnowledgeBase()
    first = await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    again = await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    assert (first.status, again.status) == (UpsertStatus.CREATED, UpsertStatus.UNCHANGED)
    assert again.document.version == 1


async def test_the_same_content_under_another_model_is_embedded_again() -> None:
    knowledge = InMemoryKnowledgeBase()
    await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    again = await ingestion(knowledge, RenamedModel()).execute(ARTICLE)

    assert again.status is UpsertStatus.UPDATED
    assert again.document.version == 2


async def test_a_document_url_that_is_not_http_is_refused_before_anything_is_stored() -> None:
    knowledge = InMemoryKnowledgeBase()
    with pytest.raises(InvalidInputError, match=r"^url: "):
        await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url="javascript:alert(1)"))
    with pytest.raises(InvalidInputError, match=r"^url: "):
        check_request(replace(ARTICLE, url="data:text/html,hi"), KnowledgeLimits())
    assert await knowledge.get_by_external_id("refunds") is None

    created = await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url=""))
    assert created.document.url is None
    cited = await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url="https://help.example/refunds"))
    assert cited.document.url == "https://help.example/refunds"


def test_jsonl_lines_are_checked_for_their_url_and_the_line_is_named() -> None:
    lines = [
        {"id": "a", "title": "A", "text": "Fine.", "url": "https://help.example/a"},
        {"id": "b", "title": "B", "text": "Fine."},
        {"id": "c", "title": "C", "text": "Fine.", "url": "javascript:alert(1)"},
    ]
    requests = parse_jsonl_lines("\n".join(json.dumps(line) for line in lines).encode())
    for _, request in requests[:2]:
        check_request(request, KnowledgeLimits())
    number, bad = requests[2]
    assert number == 3
    with pytest.raises(InvalidInputError, match=r"^url: "):
        check_request(bad, KnowledgeLimits())


async def test_a_jsonl_line_without_a_title_takes_the_one_in_its_text() -> None:
    line = {
        "id": "faq-1",
        "text": "# Refund times\n\nCards take 5 to 10 business days.",
        "content_type": "text/markdown",
    }
    [(_, request)] = parse_jsonl_lines(json.dumps(line).encode())
    check_request(request, KnowledgeLimits())

    result = await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(request)

    assert result.document.title == "Refund times"
    with pytest.raises(InvalidInputError, match="with id and text"):
        parse_jsonl_lines(json.dumps({"title": "No id or text"}).encode())


async def test_bulk_ingestion_reports_a_bad_url_and_ingests_the_rest() -> None:
    """What `support kb ingest` and the background job run: the bad document fails, naming the field."""
    knowledge = InMemoryKnowledgeBase()
    single = ingestion(knowledge, HashingEmbedder())
    bulk = IngestDocuments(single, knowledge, InMemoryUnitOfWork(), FixedClock())
    report = await bulk.execute(
        [
            replace(ARTICLE, external_id="good", url="https://help.example/refunds"),
            replace(ARTICLE, external_id="bad", url="javascript:alert(1)"),
        ]
    )
    assert (report.created, report.failed) == (1, 1)
    [(_, external_id, message)] = report.errors
    assert external_id == "bad"
    assert message.startswith("url: ")
    assert await knowledge.get_by_external_id("bad") is None


def jsonl(*records: object) -> bytes:
    return "\n".join(json.dumps(record) for record in records).encode()


GOOD = {"id": "ok", "title": "OK", "text": "Fine."}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({**GOOD, "tags": "notalist"}, 'tags must be a list of strings, not a string ("notalist")'),
        ({**GOOD, "tags": ["a", 7]}, "tags[1] must be a string, not a number (7)"),
        ({**GOOD, "tags": {"a": "b"}}, "tags must be a list of strings, not an object"),
        ({**GOOD, "id": 123}, "id must be a string, not a number (123)"),
        ({**GOOD, "id": True}, "id must be a string, not a boolean (true)"),
        ({**GOOD, "id": "  "}, "id must not be empty"),
        ({**GOOD, "text": ["a"]}, "text must be a string, not an array"),
        ({**GOOD, "text": None}, "text must be a string, not null"),
        ({**GOOD, "title": 5}, "title must be a string, not a number (5)"),
        ({**GOOD, "url": {"href": "https://a.example"}}, "url must be a string, not an object"),
        ({**GOOD, "content_type": 1}, "content_type must be a string, not a number (1)"),
        ({**GOOD, "content_type": "application/pdf"}, "content_type must be one of text/plain, text/markdown"),
        ({**GOOD, "content_type": ""}, "content_type must be one of"),
        ({**GOOD, "audience": "everyone"}, 'audience must be "public" or "internal", not a string ("everyone")'),
        ({**GOOD, "audience": 1}, 'audience must be "public" or "internal", not a number (1)'),
        ({**GOOD, "metadata": ["a"]}, "metadata must be an object of strings, not an array"),
        ({**GOOD, "metadata": {"source": 3}}, 'metadata["source"] must be a string, not a number (3)'),
        ({**GOOD, "tag": ["typo"]}, 'unknown field "tag"; a line has id, text, title, url, tags, content_type'),
        ({"title": "T", "text": "x"}, "id is missing"),
        ({"id": "a", "title": "T"}, "text is missing"),
        (["a", "b"], "a line is a JSON object with id and text, not an array"),
        ("a string", 'a line is a JSON object with id and text, not a string ("a string")'),
        (42, "a line is a JSON object with id and text, not a number (42)"),
        (None, "a line is a JSON object with id and text, not null"),
    ],
)
def test_a_jsonl_line_is_held_to_its_types_and_the_error_names_the_line_and_field(line: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        parse_jsonl_lines(jsonl(GOOD) + b"\n\n" + json.dumps(line).encode())
    assert refused.value.message.startswith("Line 3: "), refused.value.message
    assert message in refused.value.message


def test_a_jsonl_line_that_is_not_json_or_holds_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"^Line 2: not valid JSON \(Expecting value, column 1\)"):
        parse_jsonl_lines(jsonl(GOOD) + b"\nnot json")
    with pytest.raises(InvalidInputError, match=r"^Line 1: text holds an unpaired surrogate"):
        parse_jsonl_lines(b'{"id": "a", "title": "T", "text": "broken \\ud800 text"}')
    with pytest.raises(InvalidInputError, match=r"^Line 1: not valid JSON\.$"):
        parse_jsonl_lines(b"[" * 100_000)


def test_a_jsonl_line_reads_every_field_and_null_is_absent() -> None:
    full = {
        "id": "faq-1",
        "text": "<h1>Refunds</h1><p>Five days.</p>",
        "title": "Refunds",
        "url": "https://help.example/refunds",
        "tags": ["Billing", "refunds"],
        "content_type": "text/html",
        "audience": "internal",
        "metadata": {"source": "zendesk", "locale": "en"},
    }
    nulls: dict[str, object] = {"id": "faq-2", "text": "# Heading\n\nBody.", "content_type": "text/markdown"}
    nulls |= dict.fromkeys(("title", "url", "tags", "audience", "metadata"), None)
    [(_, first), (_, second)] = parse_jsonl_lines(jsonl(full, nulls))

    assert first == IngestRequest(
        content=full["text"].encode(),  # type: ignore[attr-defined]
        content_type="text/html",
        external_id="faq-1",
        title="Refunds",
        url="https://help.example/refunds",
        tags=["Billing", "refunds"],
        audience=Audience.INTERNAL,
        metadata={"source": "zendesk", "locale": "en"},
    )
    assert second == IngestRequest(
        content=b"# Heading\n\nBody.", content_type="text/markdown", external_id="faq-2", tags=[], metadata={}
    )
    [(_, plain)] = parse_jsonl_lines(jsonl(GOOD))
    assert plain.content_type == "text/plain"


def test_jsonl_lines_end_at_line_feeds_only() -> None:
    """A JSON string may hold U+2028 (JavaScript exports do): ``str.splitlines`` broke such a line in two."""
    raw = json.dumps({**GOOD, "text": "First\u2028second\u2029third\x85fourth"}, ensure_ascii=False)
    data = f"{raw}\r\n{json.dumps({**GOOD, 'id': 'b'})}\r\n".encode()
    [(first, request), (second, _)] = parse_jsonl_lines(data)
    assert (first, second) == (1, 2)
    assert request.content == "First\u2028second\u2029third\x85fourth".encode()


async def test_audience_and_metadata_of_a_jsonl_line_are_stored() -> None:
    line = {**GOOD, "audience": "internal", "metadata": {"source": "zendesk"}}
    [(_, request)] = parse_jsonl_lines(jsonl(line))
    check_request(request, KnowledgeLimits())

    result = await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(request)

    assert result.document.audience is Audience.INTERNAL
    assert dict(result.document.metadata) == {"source": "zendesk"}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({f"k{n}": "v" for n in range(51)}, "metadata: at most 50 entries"),
        ({"": "v"}, "metadata: keys have 1 to 100 characters"),
        ({"k" * 101: "v"}, "metadata: keys have 1 to 100 characters"),
        ({"k": "v" * 1001}, 'metadata["k"]: at most 1000 characters'),
    ],
)
def test_metadata_is_held_to_the_api_bodys_limits(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        check_request(replace(ARTICLE, metadata=metadata), KnowledgeLimits())
    assert refused.value.message == message
    check_request(replace(ARTICLE, metadata={f"{n:02d}" + "k" * 98: "v" * 1000 for n in range(50)}), KnowledgeLimits())


async def test_plain_text_without_a_title_is_refused_before_extraction() -> None:
    """Plain text has no heading to take a title from: a bulk line without one is refused before it is queued."""
    untitled = IngestRequest(content=b"Cards take five days.", content_type="text/plain", external_id="p")
    for content_type in ("text/plain", "Text/Plain; charset=utf-8"):
        with pytest.raises(InvalidInputError, match=r"^title: plain text \(text/plain\) needs one"):
            check_request(replace(untitled, content_type=content_type), KnowledgeLimits())
    # What extraction gives is what the check assumes: no title from plain text, even one shaped like a heading.
    assert StructuredTextExtractor().extract(b"# Refunds\n\nCards take five days.", "text/plain").title is None
    check_request(replace(untitled, title="Refunds"), KnowledgeLimits())
    check_request(replace(untitled, content_type="text/markdown"), KnowledgeLimits())
    [(_, line)] = parse_jsonl_lines(jsonl({"id": "p", "text": "Cards take five days."}))
    with pytest.raises(InvalidInputError, match=r"^title: "):
        check_request(line, KnowledgeLimits())


class RecordingReporter:
    def __init__(self) -> None:
        self.reports: list[tuple[float, dict[str, Any]]] = []

    async def __call__(self, progress: float, detail: Mapping[str, Any]) -> None:
        self.reports.append((progress, dict(detail)))


async def test_a_bulk_jobs_total_is_its_document_count_from_the_start_and_progress_is_done_over_total() -> None:
    documents = 2 * BULK_GROUP_DOCUMENTS + 36  # three groups, the last one short
    lines = [{"id": f"d{n}", "title": f"D{n}", "text": f"Document {n} says something."} for n in range(documents)]
    lines[40]["url"] = "javascript:alert(1)"  # fails inside the job (as if checked by an older version)
    knowledge = InMemoryKnowledgeBase()
    bulk = IngestDocuments(ingestion(knowledge, HashingEmbedder()), knowledge, InMemoryUnitOfWork(), FixedClock())
    reporter = RecordingReporter()

    result = await RunBulkIngestion(bulk).execute({"records": jsonl(*lines).decode(), "documents": documents}, reporter)

    # Reported before any document is read, then after each group is written (99 good documents: 4 groups).
    assert reporter.reports[0] == (0.0, {**result, "done": 0, "created": 0, "failed": 0, "chunks": 0, "errors": []})
    assert len(reporter.reports) == 1 + 4
    for progress, detail in reporter.reports:
        assert detail["total"] == documents
        assert progress == detail["done"] / documents
        assert detail["done"] == detail["created"] + detail["updated"] + detail["unchanged"] + detail["failed"]
    done = [detail["done"] for _, detail in reporter.reports]
    assert done == sorted(set(done))
    assert reporter.reports[-1] == (1.0, result)
    assert (result["total"], result["created"], result["failed"]) == (documents, documents - 1, 1)


def test_the_cli_counts_a_jsonl_files_documents_as_the_reader_reads_them(tmp_path: Path) -> None:
    """The progress bar's total: lines split at line feeds only, blank ones (Unicode spaces too) skipped."""
    export = tmp_path / "export.jsonl"
    raw = json.dumps({**GOOD, "text": "One\u2028line"}, ensure_ascii=False)
    export.write_text(f"\ufeff{raw}\n\u3000\n\n{json.dumps({**GOOD, 'id': 'b'})}\r\n", encoding="utf-8")

    assert count_sources([export]) == len(parse_jsonl_lines(export.read_bytes())) == 2
    assert [request.external_id for request in iter_sources([export])] == ["ok", "b"]


async def test_the_cli_titles_a_file_without_one_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "store-hours.txt").write_text("We are open 9 to 5 on weekdays.")
    (tmp_path / "returns.md").write_text("# Returns policy\n\nReturn unused items within 30 days.")
    ingest = ingestion(InMemoryKnowledgeBase(), HashingEmbedder())

    titles = {}
    for request in iter_sources([tmp_path]):
        result = await ingest.execute(request)
        titles[PurePath(result.document.external_id).name] = result.document.title

    assert titles == {"store-hours.txt": "store-hours", "returns.md": "Returns policy"}


def test_a_file_is_the_same_document_however_its_path_is_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "gift-cards.md").write_text("# Gift cards\n\nThey never expire.")
    monkeypatch.chdir(tmp_path)

    typed = [
        [request.external_id for request in iter_sources([path])]
        for path in (Path("docs/gift-cards.md"), tmp_path / "docs" / "gift-cards.md", Path("docs"), Path("./docs/"))
    ]

    assert typed == [[str((tmp_path / "docs" / "gift-cards.md").resolve())]] * 4


async def test_the_cli_reads_a_windows_1252_file_as_an_upload_is_read_and_an_unreadable_file_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI decoded Markdown as UTF-8 only: a Windows-1252 file was a traceback, and nothing was ingested.
    (tmp_path / "a-voucher.md").write_bytes("# Café voucher\n\nIt is worth €10 \u2013 no exceptions.".encode("cp1252"))
    (tmp_path / "b-locked.md").write_text("# Locked\n\nUnreadable.")
    (tmp_path / "c-returns.md").write_text("# Returns\n\nWithin 30 days.")
    read_bytes = Path.read_bytes

    def refusing(path: Path) -> bytes:
        if path.name == "b-locked.md":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refusing)
    knowledge = InMemoryKnowledgeBase()
    bulk = IngestDocuments(ingestion(knowledge, HashingEmbedder()), knowledge, InMemoryUnitOfWork(), FixedClock())

    report = await bulk.execute(iter_sources([tmp_path]))

    assert (report.created, report.failed) == (2, 1)
    [(position, external_id, message)] = report.errors
    assert (position, PurePath(external_id).name) == (1, "b-locked.md")
    assert message.endswith("b-locked.md: the file could not be read (Permission denied).")
    voucher = await knowledge.get_by_external_id(str((tmp_path / "a-voucher.md").resolve()))
    assert voucher is not None
    assert voucher.title == "Café voucher"
    upload = await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(
        IngestRequest(content=read_bytes(tmp_path / "a-voucher.md"), content_type="text/markdown", external_id="v")
    )
    assert upload.document.fingerprint == voucher.fingerprint


FRONT_MATTER_FILES = {
    "shipping-rates.md": (
        (
            b'---\ntitle: "Shipping rates & delivery times"\nslug: shipping-rates\ntags: [shipping, orders]\n'
            b"updated: 2026-10-02\n---\n\n# Shipping rates & delivery times\n\nWe ship from Rotterdam.\n"
        ),
        ("Shipping rates & delivery times", None, ("orders", "shipping")),
    ),
    "loyalty.md": (
        (
            b"---\ntitle: Loyalty points\ntags:\n  - loyalty\n  - rewards\nurl: https://help.example/loyalty\n---\n\n"
            b"# Loyalty points\n\nYou earn 1 point per euro spent.\n"
        ),
        ("Loyalty points", "https://help.example/loyalty", ("loyalty", "rewards")),
    ),
    "store-credit.md": (
        (
            b"---\ntitle: Store credit\ntags: credit, billing\nurl: https://help.example/store-credit\n---\n\n"
            b"Store credit never expires.\n"
        ),
        ("Store credit", "https://help.example/store-credit", ("billing", "credit")),
    ),
    "gift-cards.md": (
        b"---\r\ntitle: Gift cards FAQ\r\ntags: giftcards, payments\r\n---\r\n\r\nValid for 3 years.\r\n",
        ("Gift cards FAQ", None, ("giftcards", "payments")),
    ),
}


async def test_a_markdown_file_with_front_matter_is_one_document_from_the_cli_and_from_an_upload(
    tmp_path: Path,
) -> None:
    # The CLI kept the quotes of a quoted title, read "[shipping, orders]" as the tags "[shipping" and "orders]", a
    # block list as no tags and CRLF front matter as text; the upload read only the title. Given fields still win.
    for name, (data, _) in FRONT_MATTER_FILES.items():
        (tmp_path / name).write_bytes(data)
    from_cli = {}
    for request in iter_sources([tmp_path]):
        document = (await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(request)).document
        from_cli[PurePath(document.external_id).name] = (document.title, document.url, document.tags)
    from_upload = {}
    for name, (data, _) in FRONT_MATTER_FILES.items():
        # As POST /v1/knowledge/uploads builds it from a form with only the file.
        upload = IngestRequest(
            content=data, content_type="text/markdown", external_id=name, fallback_title=PurePath(name).stem
        )
        document = (await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(upload)).document
        from_upload[name] = (document.title, document.url, document.tags)

    expected = {name: declared for name, (_, declared) in FRONT_MATTER_FILES.items()}
    assert from_cli == from_upload == expected
    given = IngestRequest(
        content=FRONT_MATTER_FILES["loyalty.md"][0],
        content_type="text/markdown",
        title="Points",
        url="https://help.example/points",
        tags=["Points"],
    )
    document = (await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(given)).document
    assert (document.title, document.url, document.tags) == ("Points", "https://help.example/points", ("points",))


async def test_a_front_matter_url_is_held_to_the_rules_of_a_given_one() -> None:
    request = IngestRequest(content=b"---\nurl: javascript:alert(1)\n---\n# Hi\n\nText.", content_type="text/markdown")

    with pytest.raises(InvalidInputError, match=r"^Front matter url: must be an absolute http"):
        await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(request)


class LoopWatchingExtractor(StructuredTextExtractor):
    """Extraction as usual, noting whether it ran on the event loop's thread; a document marked BROKEN raises."""

    def __init__(self) -> None:
        super().__init__()
        self.on_loop: list[bool] = []

    def extract(self, content: bytes, content_type: str) -> Any:
        self.on_loop.append(_on_event_loop())
        if b"BROKEN" in content:
            raise RecursionError("maximum recursion depth exceeded")
        return super().extract(content, content_type)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def test_bulk_ingestion_reads_and_cuts_off_the_event_loop_and_a_document_no_reader_copes_with_fails_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Extraction and chunking are CPU work proportional to the text: on the event loop, one big upload held every
    # request (and the health check) for seconds to minutes.
    knowledge = InMemoryKnowledgeBase()
    extractor = LoopWatchingExtractor()
    cut_on_loop: list[bool] = []
    real_chunk = chunk_document

    def watched_chunk(*args: Any, **kwargs: Any) -> Any:
        cut_on_loop.append(_on_event_loop())
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(knowledge_module, "chunk_document", watched_chunk)
    single = IngestDocument(
        knowledge, extractor, HashingEmbedder(), InMemoryUnitOfWork(), FixedClock(), KnowledgeLimits()
    )
    bulk = IngestDocuments(single, knowledge, InMemoryUnitOfWork(), FixedClock())

    report = await bulk.execute(
        [
            replace(ARTICLE, external_id="broken", content=b"# BROKEN\n\nDeep."),
            replace(ARTICLE, external_id="good"),
        ]
    )

    assert (report.created, report.failed) == (1, 1)
    assert report.errors == [(0, "broken", "The document could not be read.")]
    assert await knowledge.get_by_external_id("good") is not None
    assert extractor.on_loop == [False, False]
    assert cut_on_loop
    assert not any(cut_on_loop)
    await single.execute(replace(ARTICLE, external_id="one"))
    assert extractor.on_loop[-1] is False
    assert cut_on_loop[-1] is False


class EmbedderBackAfter(HashingEmbedder):
    """Unreachable for its first ``outage`` calls, then back."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if self.outage:
            self.outage -= 1
            raise EmbedderUnavailableError
        return await super().embed_documents(texts)


async def test_a_bulk_job_waits_out_an_outage_and_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    # An upload accepted while the database was down failed at once, for good (found by an exploratory test).
    lines = [{"id": f"d{n}", "title": f"D{n}", "text": f"Document {n} says something."} for n in range(3)]
    knowledge = InMemoryKnowledgeBase()
    bulk = IngestDocuments(ingestion(knowledge, EmbedderBackAfter(2)), knowledge, InMemoryUnitOfWork(), FixedClock())
    reporter, slept = RecordingReporter(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(knowledge_module, "wait_for_outage", sleep)
    result = await RunBulkIngestion(bulk).execute({"records": jsonl(*lines).decode(), "documents": 3}, reporter)

    assert (result["created"], result["failed"]) == (3, 0)
    assert slept == [1.0, 2.0]
    assert sum("waiting" in detail for _, detail in reporter.reports) == 2


async def test_a_bulk_job_gives_up_on_an_outage_that_does_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [{"id": "d0", "title": "D0", "text": "Document 0 says something."}]
    knowledge = InMemoryKnowledgeBase()
    bulk = IngestDocuments(
        ingestion(knowledge, EmbedderBackAfter(10_000)), knowledge, InMemoryUnitOfWork(), FixedClock()
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(knowledge_module, "wait_for_outage", sleep)
    with pytest.raises(EmbedderUnavailableError):
        await RunBulkIngestion(bulk).execute({"records": jsonl(*lines).decode(), "documents": 1}, RecordingReporter())
    assert sum(slept) >= OUTAGE_GIVE_UP_S
