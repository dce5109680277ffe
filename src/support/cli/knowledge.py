"""``support kb`` and ``support eval``: ingestion with progress, search, listing, retrieval evaluation."""

import json
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from dishka import AsyncContainer, Provider, Scope
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from support.adapters.memory.cache import InMemoryCache
from support.application.evaluation import score_rankings
from support.application.knowledge import (
    BulkIngestReport,
    IngestDocuments,
    IngestRequest,
    ListDocuments,
    RescanKnowledge,
    RescanReport,
    SearchKnowledge,
)
from support.cli.sources import SourceError, count_sources, iter_sources
from support.config import Settings
from support.domain.knowledge import Document, SearchQuery
from support.ports.knowledge import Cache

kb_app = typer.Typer(help="Knowledge base: ingest, search, list, rescan.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval and answer quality.", no_args_is_help=True)
console = Console(stderr=True)


async def ingest_with_progress(
    container: AsyncContainer, requests: Iterable[IngestRequest], total: int, *, label: str
) -> BulkIngestReport:
    """Run bulk ingestion with a progress bar on stderr."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)

        async def report(state: BulkIngestReport) -> None:
            progress.update(task, completed=state.done)

        async with container() as request:
            ingest = await request.get(IngestDocuments)
            result = await ingest.execute(requests, on_progress=report)
        progress.update(task, completed=result.done)
    return result


def print_report(report: BulkIngestReport) -> None:
    console.print(
        f"{report.total} document{'' if report.total == 1 else 's'}: {report.created} created, "
        f"{report.updated} updated, "
        f"{report.unchanged} unchanged, {report.failed} failed; {report.chunks} chunks embedded."
    )
    for position, external_id, message in report.errors[:20]:
        console.print(f"  [red]#{position}[/red] {external_id}: {message}")


def in_memory_cache() -> Provider:
    provider = Provider(scope=Scope.APP)
    provider.provide(InMemoryCache, provides=Cache, override=True)
    return provider


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files, folders, or .jsonl files of {id, text, title?, url?, tags?}.")
    ],
) -> None:
    """Ingest documents (txt, md, html, pdf, jsonl); unchanged documents are skipped."""
    from support.cli.main import with_container

    try:
        total = count_sources(paths)
    except (SourceError, OSError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None

    async def run(container: AsyncContainer, _: Settings) -> BulkIngestReport:
        return await ingest_with_progress(container, iter_sources(paths), total, label="Ingesting")

    try:
        report = with_container(run, valkey=False)
    except SourceError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    print_report(report)
    if report.failed:
        raise typer.Exit(1)


_SNIPPET_CHARS = 160
_SNIPPET_LEAD = 40
_SNIPPET_TERM = re.compile(r"\w{2,}")


def snippet(text: str, query: str, width: int = _SNIPPET_CHARS) -> str:
    """``width`` characters of ``text`` around the line sharing most words with the query ("E05"), not its start.

    A chunk's start is often another row of the same table: the line asked about was cut away.
    """
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    words = {word.lower() for word in _SNIPPET_TERM.findall(query)}
    # The line sharing the most words with the query; the first of equals.
    best, shared = "", 0
    for line in text.splitlines():
        count = len(words & {word.lower() for word in _SNIPPET_TERM.findall(line)})
        if count > shared:
            best, shared = line, count
    start = max(0, flat.find(" ".join(best.split())) - _SNIPPET_LEAD) if shared else 0
    start = min(start, len(flat) - width)
    piece = flat[start : start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(flat) else "")


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    limit: Annotated[int, typer.Option(min=1, max=50)] = 5,
    tag: Annotated[list[str] | None, typer.Option(help="Only documents with this tag (repeatable).")] = None,
) -> None:
    """Search the knowledge base as the assistant does."""
    from support.cli.main import with_container

    async def run(container: AsyncContainer, _: Settings) -> None:
        async with container() as request:
            search = await request.get(SearchKnowledge)
            hits = await search.execute(SearchQuery(text=query, limit=limit, tags=tuple(tag or ())))
        table = Table("#", "score", "title", "section", "text")
        for rank, hit in enumerate(hits, 1):
            table.add_row(
                str(rank), f"{hit.score:.4f}", hit.title, " > ".join(hit.heading_path), snippet(hit.text, query)
            )
        Console().print(table)

    with_container(run, valkey=False, overrides=(in_memory_cache(),))


@kb_app.command("list")
def kb_list(tag: Annotated[str | None, typer.Option(help="Only documents with this tag.")] = None) -> None:
    """List documents, newest first."""
    from support.cli.main import with_container

    async def run(container: AsyncContainer, _: Settings) -> None:
        table = Table("id", "external id", "title", "version", "chunks", "tags", "flags")
        cursor: str | None = None
        async with container() as request:
            documents = await request.get(ListDocuments)
            while True:
                page = await documents.execute(tag=tag, limit=200, cursor=cursor)
                for doc in page.items:
                    table.add_row(
                        str(doc.id), doc.external_id, doc.title, str(doc.version), str(doc.chunk_count),
                        ", ".join(doc.tags), flag_summary(doc),
                    )  # fmt: skip
                cursor = page.next_cursor
                if cursor is None:
                    break
        Console().print(table)

    with_container(run, valkey=False)


@kb_app.command("rescan")
def kb_rescan() -> None:
    """Flag every stored document again with this release's prompt-injection detector (nothing is re-embedded)."""
    from support.cli.main import with_container

    async def run(container: AsyncContainer, _: Settings) -> RescanReport:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("Rescanning", total=None)

            async def report(state: RescanReport) -> None:
                progress.update(task, completed=state.done, total=state.total)

            async with container() as request:
                return await (await request.get(RescanKnowledge)).execute(report)

    report = with_container(run, valkey=False)
    console.print(
        f"{report.scanned} document{'' if report.scanned == 1 else 's'} scanned: {report.changed} with new flags; "
        f"{report.flagged_after} flagged now, {report.flagged_before} before"
        + (f"; {report.skipped} updated or deleted meanwhile (scanned when written)" if report.skipped else "")
        + "."
    )


def flag_summary(document: Document) -> str:
    """How many passages were flagged and why (``2: override_instructions, role_marker``), or nothing."""
    if not document.flags:
        return ""
    reasons = sorted({flag.reason.value for flag in document.flags})
    return f"[yellow]{len(document.flags)}: {', '.join(reasons)}[/yellow]"


class _Question(msgspec.Struct):
    id: str
    question: str
    gold_doc_ids: list[str]
    answerable: bool
    answer: str = ""


@eval_app.command("retrieval")
def eval_retrieval(
    kb: Annotated[Path, typer.Option(help="Knowledge base JSONL ({id, title, text}).")],
    questions: Annotated[Path, typer.Option(help="Questions JSONL ({id, question, gold_doc_ids, answerable}).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
) -> None:
    """Ingest KB into a fresh knowledge base, ask every answerable question, print hit@1, recall@5, MRR@10."""
    from support.cli.main import with_container

    items = [msgspec.json.decode(line, type=_Question) for line in questions.read_bytes().splitlines() if line.strip()]
    answerable = [item for item in items if item.answerable]

    async def run(container: AsyncContainer, _: Settings) -> dict[str, object]:
        started = time.perf_counter()
        report = await ingest_with_progress(container, iter_sources([kb]), count_sources([kb]), label="Ingesting")
        ingest_s = time.perf_counter() - started
        rankings: list[list[str]] = []
        latencies: list[float] = []
        async with container() as request:
            search = await request.get(SearchKnowledge)
            for item in answerable:
                began = time.perf_counter()
                hits = await search.execute(SearchQuery(text=item.question[:2000], limit=10))
                latencies.append((time.perf_counter() - began) * 1000)
                rankings.append([hit.external_id for hit in hits])
        metrics = score_rankings(rankings, [frozenset(item.gold_doc_ids) for item in answerable])
        latencies.sort()
        return {
            "documents": report.total,
            "chunks": report.chunks,
            "ingest_seconds": round(ingest_s, 2),
            "questions": metrics.questions,
            "hit_at_1": round(metrics.hit_at_1, 4),
            "recall_at_5": round(metrics.recall_at_5, 4),
            "mrr_at_10": round(metrics.mrr_at_10, 4),
            "search_ms_p50": round(latencies[len(latencies) // 2], 2),
            "search_ms_p95": round(latencies[int(len(latencies) * 0.95)], 2),
        }

    with tempfile.TemporaryDirectory(prefix="support-eval-") as scratch:
        figures = with_container(
            run, valkey=False, overrides=(in_memory_cache(),), fresh_database=Path(scratch) / "postgres"
        )
    table = Table("metric", "value", title="Retrieval on " + questions.name)
    for key, value in figures.items():
        table.add_row(key, str(value))
    Console().print(table)
    typer.echo(json.dumps(figures))
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")
