"""Spot check of the offline responder on the bundled Northwind Supply help center (quality, not speed).

Run: ``.venv/bin/python -m bench.northwind_answers``. It starts a throwaway embedded PostgreSQL and Valkey, loads
the sample help center as ``make run`` does, and asks every question of ``bench/data/northwind_questions.tsv``
(a customer question and the article that covers it, or ``NONE``) through the turn's own search
(``ReplySettings.search_query``: 5 passages with their neighbouring chunks) and the offline responder. Printed per
question: the rank of the right article in retrieval, whether the reply quotes it first, whether it handed off,
the evidence score and the reply's opening; then the totals, also written to ``bench/results/northwind.json``.
"""

import argparse
import asyncio
import csv
import json
import sys
import tempfile
from pathlib import Path

from bench import chat
from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.offline.extractive import ExtractiveLLM
from support.adapters.postgres.engine import create_engine, create_session_factory
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
from support.application.replies import ReplySettings
from support.cli import migrations
from support.cli.sources import SAMPLE_PREFIX
from support.config import DatabaseSettings, Settings
from support.container import build_container
from support.domain.assistant import ReplyRequest

QUESTIONS = Path(__file__).parent / "data" / "northwind_questions.tsv"
RESULTS = Path(__file__).parent / "results" / "northwind.json"
UNCOVERED = "NONE"


async def spot_check(questions: list[tuple[str, str]], opening_chars: int) -> dict[str, int]:
    totals = {"covered": 0, "ranked_first": 0, "quoted_first": 0, "covered_handed_off": 0}
    totals |= {"uncovered": 0, "uncovered_handed_off": 0}
    responder = ExtractiveLLM()
    with tempfile.TemporaryDirectory(prefix="northwind-") as folder, chat.backends_for(Path(folder)) as backends:
        await asyncio.to_thread(migrations.upgrade, backends.database_url)
        embedder = OnnxMiniLMEmbedder()
        engine = create_engine(backends.database_url, DatabaseSettings(pool_size=2))
        try:
            await chat.load_help_center(backends, embedder)
            settings = await turn_settings(backends, embedder)
            async with create_session_factory(engine)() as session:
                knowledge = PgVectorKnowledgeBase(session)
                for question, article in questions:
                    vector = await embedder.embed_query(question)
                    hits = await knowledge.search(settings.search_query(question), vector)
                    ranked = [hit.external_id.removeprefix(SAMPLE_PREFIX) for hit in hits]
                    draft = responder.draft(ReplyRequest(question=question, passages=hits))
                    quoted = [hit.external_id.removeprefix(SAMPLE_PREFIX) for _, hit, _ in draft.blocks if hit]
                    handed_off = draft.handoff is not None
                    rank = ranked.index(article) + 1 if article in ranked else 0
                    if article == UNCOVERED:
                        totals["uncovered"] += 1
                        totals["uncovered_handed_off"] += handed_off
                    else:
                        totals["covered"] += 1
                        totals["ranked_first"] += rank == 1
                        totals["quoted_first"] += not handed_off and bool(quoted) and quoted[0] == article
                        totals["covered_handed_off"] += handed_off
                    verdict = "handoff" if handed_off else ("quoted" if quoted[:1] == [article] else "other")
                    print(f"[{rank}] {verdict:7} {draft.evidence_score} {question}")
                    print("    " + draft.text.replace("\n", " / ")[:opening_chars])
        finally:
            await engine.dispose()
            embedder.close()
    return totals


async def turn_settings(backends: chat.Backends, embedder: OnnxMiniLMEmbedder) -> ReplySettings:
    """The turn's settings as the service builds them (without an Anthropic key: the offline responder's)."""
    settings = Settings(env="dev", database_url=backends.database_url, valkey_url=backends.valkey_url)
    container = build_container(settings, chat.embedder_provider(embedder))
    try:
        async with container() as request:
            return await request.get(ReplySettings)
    finally:
        await container.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--opening", type=int, default=200, help="characters of each reply to print")
    args = parser.parse_args()
    with QUESTIONS.open(newline="") as file:
        questions = [(row["question"], row["article"]) for row in csv.DictReader(file, delimiter="\t")]
    totals = asyncio.run(spot_check(questions, args.opening))
    RESULTS.write_text(json.dumps(totals, indent=2) + "\n")
    json.dump(totals, sys.stdout)
    print()


if __name__ == "__main__":
    main()
