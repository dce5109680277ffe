"""``support eval answers``: the offline responder on a question set, handoff precision/recall and token F1."""

import json
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from dishka import AsyncContainer
from rich.console import Console
from rich.table import Table

from support.adapters.offline.extractive import ExtractiveLLM
from support.application.evaluation import (
    AnswerMetrics,
    AnswerOutcome,
    at_threshold,
    best_threshold,
    score_answers,
    sweep_thresholds,
    token_f1,
)
from support.application.knowledge import MAX_QUERY_LENGTH, SearchKnowledge
from support.cli.knowledge import in_memory_cache, ingest_with_progress
from support.cli.sources import count_sources, iter_sources
from support.config import Settings
from support.domain.assistant import HandoffSignal, ReplyCompleted, ReplyRequest, TextDelta
from support.domain.conversations import HandoffAction
from support.domain.escalation import EscalationPolicy
from support.domain.knowledge import SearchHit, SearchQuery

console = Console(stderr=True)
# The table's thresholds; the tuning search uses a finer grid.
TABLE_THRESHOLDS = tuple(step / 20 for step in range(20))
TUNING_THRESHOLDS = tuple(step / 100 for step in range(100))


class _Question(msgspec.Struct):
    id: str
    question: str
    answerable: bool
    answer: str = ""


@dataclass(frozen=True, slots=True)
class _Reply:
    text: str
    handed_off: bool
    evidence_score: float


class _Searcher:
    """The assistant's ``search_knowledge`` tool over the same use case (the offline responder never calls it)."""

    def __init__(self, search: SearchKnowledge, limit: int, context: int) -> None:
        self._search = search
        self._limit = limit
        self._context = context

    async def search_knowledge(self, query: str) -> Sequence[SearchHit]:
        query = query[:MAX_QUERY_LENGTH]
        return await self._search.execute(SearchQuery(text=query, limit=self._limit, context=self._context))


async def _respond(llm: ExtractiveLLM, request: ReplyRequest, tools: _Searcher) -> _Reply:
    """Stream one reply as the conversation use case would, keeping what the metrics need."""
    text: list[str] = []
    handed_off = False
    score = 0.0
    async for event in llm.reply(request, tools):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, HandoffSignal):
            handed_off = True
        elif isinstance(event, ReplyCompleted):
            score = event.evidence_score or 0.0
    return _Reply("".join(text), handed_off, score)


def _parity(question_id: str) -> str | None:
    """``even`` or ``odd`` by the number the id ends with (the tuning split); None when it ends otherwise."""
    digits = re.search(r"(\d+)$", question_id)
    if digits is None:
        return None
    return "odd" if int(digits[1]) % 2 else "even"


def _figures(metrics: AnswerMetrics) -> dict[str, float | int]:
    handoff = metrics.handoff
    return {
        "questions": handoff.questions,
        "answerable": metrics.answerable,
        "should_hand_off": handoff.should_hand_off,
        "handed_off": handoff.handed_off,
        "handoff_precision": round(handoff.precision, 4),
        "handoff_recall": round(handoff.recall, 4),
        "handoff_f1": round(handoff.f1, 4),
        "needless_handoff_rate": round(handoff.needless_rate, 4),
        "answered_answerable": metrics.answered_answerable,
        "f1_answerable": round(metrics.f1_answerable, 4),
        "f1_answered": round(metrics.f1_answered, 4),
    }


def eval_answers(
    kb: Annotated[Path, typer.Option(help="Knowledge base JSONL ({id, title, text}).")],
    questions: Annotated[Path, typer.Option(help="Questions JSONL ({id, question, answer, answerable}).")],
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Evidence threshold [default: SUPPORT_LLM__EVIDENCE_THRESHOLD]."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
) -> None:
    """Ingest KB into a fresh knowledge base, answer every question with the offline responder, score it.

    Prints handoff precision/recall/F1 (positive: it said it could not answer and offered a human; right when
    the question is unanswerable), token F1 of the answers to answerable questions, a threshold sweep, and the
    threshold with the best handoff F1 on the even-numbered questions (to tune on even ids and check on odd).
    """
    from support.cli.main import with_container

    items = [msgspec.json.decode(line, type=_Question) for line in questions.read_bytes().splitlines() if line.strip()]

    async def run(container: AsyncContainer, settings: Settings) -> dict[str, object]:
        chosen = settings.llm.evidence_threshold if threshold is None else threshold
        started = time.perf_counter()
        report = await ingest_with_progress(container, iter_sources([kb]), count_sources([kb]), label="Ingesting")
        ingest_s = time.perf_counter() - started
        # One run that answers whenever it can gives every threshold's decisions (see at_threshold); the run at
        # the chosen threshold is the responder as deployed.
        unthresholded, deployed = ExtractiveLLM(evidence_threshold=0.0), ExtractiveLLM(evidence_threshold=chosen)
        sweep_outcomes: list[AnswerOutcome] = []
        outcomes: list[AnswerOutcome] = []
        reply_ms: list[float] = []
        policy = await container.get(EscalationPolicy)
        rules: dict[str, dict[str, int]] = {}
        async with container() as request:
            search = await request.get(SearchKnowledge)
            tools = _Searcher(search, settings.llm.passages, settings.llm.context_chunks)
            for item in items:
                screening = policy.screen(item.question, [])
                if screening.decision.action is HandoffAction.ESCALATE:
                    # The policy hands over before the model runs (a request for a person, a sensitive topic).
                    rule = screening.decision.rule or "unknown"
                    by_rule = rules.setdefault(rule, {"questions": 0, "answerable": 0})
                    by_rule["questions"] += 1
                    by_rule["answerable"] += item.answerable
                    outcomes.append(_outcome(item, _Reply("", True, 0.0)))
                    sweep_outcomes.append(_outcome(item, _Reply("", True, 0.0)))
                    continue
                hits = await tools.search_knowledge(item.question)
                ask = ReplyRequest(question=item.question, passages=hits)
                began = time.perf_counter()
                reply = await _respond(deployed, ask, tools)
                reply_ms.append((time.perf_counter() - began) * 1000)
                full = await _respond(unthresholded, ask, tools)
                outcomes.append(_outcome(item, reply))
                sweep_outcomes.append(_outcome(item, full))
        return _summarise(items, outcomes, sweep_outcomes, chosen, reply_ms) | {
            "documents": report.total,
            "chunks": report.chunks,
            "ingest_seconds": round(ingest_s, 2),
            "passages": settings.llm.passages,
            "context_chunks": settings.llm.context_chunks,
            # Questions the escalation policy handed over before the model, by rule (answerable ones were needless).
            "policy_escalations": rules,
        }

    with tempfile.TemporaryDirectory(prefix="support-eval-") as scratch:
        figures = with_container(
            run, valkey=False, overrides=(in_memory_cache(),), fresh_database=Path(scratch) / "postgres"
        )
    _print(figures, questions.name)
    typer.echo(json.dumps(figures))
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")


def _outcome(item: _Question, reply: _Reply) -> AnswerOutcome:
    answered = item.answerable and not reply.handed_off
    return AnswerOutcome(
        should_hand_off=not item.answerable,
        handed_off=reply.handed_off,
        evidence_score=reply.evidence_score,
        answer_f1=token_f1(reply.text, item.answer) if answered else 0.0,
    )


def _summarise(
    items: Sequence[_Question],
    outcomes: Sequence[AnswerOutcome],
    sweep_outcomes: Sequence[AnswerOutcome],
    chosen: float,
    reply_ms: list[float],
) -> dict[str, object]:
    splits = {name: [index for index, item in enumerate(items) if _parity(item.id) == name] for name in ("even", "odd")}
    figures: dict[str, object] = {"threshold": chosen, **_figures(score_answers(outcomes))}
    if all(splits.values()):
        figures["splits"] = {
            name: _figures(score_answers([outcomes[index] for index in indexes])) for name, indexes in splits.items()
        }
        tuning = [sweep_outcomes[index] for index in splits["even"]]
        tuned, tuned_metrics = best_threshold(tuning, TUNING_THRESHOLDS)
        held_out = score_answers(at_threshold([sweep_outcomes[index] for index in splits["odd"]], tuned))
        figures["tuned_on_even"] = {
            "threshold": tuned,
            "even_handoff_f1": round(tuned_metrics.handoff.f1, 4),
            "odd_handoff_f1": round(held_out.handoff.f1, 4),
            "odd_f1_answerable": round(held_out.f1_answerable, 4),
        }
    table = sorted({*TABLE_THRESHOLDS, chosen})
    figures["sweep"] = [
        {"threshold": value, **_figures(metrics)} for value, metrics in sweep_thresholds(sweep_outcomes, table)
    ]
    reply_ms.sort()
    figures["reply_ms_p50"] = round(reply_ms[len(reply_ms) // 2], 3) if reply_ms else 0.0
    figures["reply_ms_p95"] = round(reply_ms[int(len(reply_ms) * 0.95)], 3) if reply_ms else 0.0
    return figures


def _print(figures: dict[str, object], name: str) -> None:
    out = Console()
    summary = Table("metric", "value", title=f"Answers on {name} (offline responder)")
    for key, value in figures.items():
        if key not in {"sweep", "splits", "tuned_on_even"}:
            summary.add_row(key, str(value))
    splits = figures.get("splits")
    if isinstance(splits, dict):
        for split, values in splits.items():
            for key in ("handoff_precision", "handoff_recall", "handoff_f1", "f1_answerable", "f1_answered"):
                summary.add_row(f"{split}: {key}", str(values[key]))
    tuned = figures.get("tuned_on_even")
    if isinstance(tuned, dict):
        for key, value in tuned.items():
            summary.add_row(f"tuned on even: {key}", str(value))
    out.print(summary)
    sweep = Table(
        "threshold", "handoffs", "precision", "recall", "F1", "needless", "F1 ans.", "F1 answd.",
        title="Threshold sweep",
        caption=(
            "Hand off below the threshold. precision, recall, F1: of handing off (unanswerable = should). "
            "needless: share of answerable questions handed off. F1 ans.: token F1 over answerable questions "
            "(a handoff counts 0); F1 answd.: over those answered."
        ),
    )  # fmt: skip
    rows = figures.get("sweep")
    for row in rows if isinstance(rows, list) else []:
        sweep.add_row(
            f"{row['threshold']:.2f}", str(row["handed_off"]), f"{row['handoff_precision']:.3f}",
            f"{row['handoff_recall']:.3f}", f"{row['handoff_f1']:.3f}", f"{row['needless_handoff_rate']:.3f}",
            f"{row['f1_answerable']:.3f}", f"{row['f1_answered']:.3f}",
        )  # fmt: skip
    out.print(sweep)
