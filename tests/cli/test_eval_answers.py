"""``support eval answers`` on a tiny question set: a fresh knowledge base, the offline responder, the figures.

Runs the command in a worker thread (it calls ``asyncio.run``) against its own throwaway PostgreSQL, with the
hashing embedder so that no model is loaded.
"""

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.cli.answers import TABLE_THRESHOLDS
from support.cli.main import app
from tests.conftest import in_thread

ARTICLES = [
    {
        "id": "returns",
        "title": "How to start a return",
        "text": "To start a return, open Account > Orders and select Return items next to the order. "
        "Print the prepaid label we email you and drop the parcel at any carrier location.\n\n"
        "Returns are free within 30 days of delivery.",
    },
    {
        "id": "shipping",
        "title": "Shipping options and delivery times",
        "text": "Standard shipping takes 3 to 5 business days. Express shipping takes 1 to 2 business days "
        "and costs 25 dollars.",
    },
    {
        "id": "password",
        "title": "Reset your password",
        "text": "Select Forgot password on the sign-in page. We email you a reset link that expires after 30 minutes.",
    },
    {
        "id": "warranty",
        "title": "Warranty claims",
        "text": "Desks carry a 10 year warranty on the frame and 5 years on the motors. File a claim from "
        "Account > Warranty with a photo of the serial number sticker.",
    },
]
QUESTIONS = [
    {
        "id": "T_Q000",
        "question": "How do I start a return for my order?",
        "answer": "open Account > Orders and select Return items next to the order",
        "gold_doc_ids": ["returns"],
        "answerable": True,
    },
    {
        "id": "T_Q001",
        "question": "How long does express shipping take?",
        "answer": "Express shipping takes 1 to 2 business days",
        "gold_doc_ids": ["shipping"],
        "answerable": True,
    },
    {
        "id": "T_Q002",
        "question": "My password reset link expired, what now?",
        "answer": "We email you a reset link that expires after 30 minutes.",
        "gold_doc_ids": ["password"],
        "answerable": True,
    },
    {
        "id": "T_Q003",
        "question": "How long is the warranty on desk motors?",
        "answer": "5 years on the motors",
        "gold_doc_ids": ["warranty"],
        "answerable": True,
    },
    {
        "id": "T_Q004",
        "question": "Which espresso beans pair with oat milk?",
        "answer": "",
        "gold_doc_ids": [],
        "answerable": False,
    },
    {
        "id": "T_Q005",
        "question": "Can I pay in bitcoin or gold coins?",
        "answer": "",
        "gold_doc_ids": [],
        "answerable": False,
    },
]


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Only the variables this test sets (no external database), and logging restored afterwards."""
    for name in [name for name in os.environ if name.startswith("SUPPORT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SUPPORT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SUPPORT_EMBEDDING__PROVIDER", "hashing")
    monkeypatch.setenv("SUPPORT_LOG_LEVEL", "warning")
    monkeypatch.setenv("COLUMNS", "200")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
def test_eval_answers_reports_handoffs_token_f1_and_a_threshold_sweep(tmp_path: Path) -> None:
    kb = write_jsonl(tmp_path / "kb.jsonl", ARTICLES)
    questions = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "answers.json"

    result = in_thread(
        lambda: CliRunner().invoke(
            app,
            [
                "eval",
                "answers",
                "--kb",
                str(kb),
                "--questions",
                str(questions),
                "--threshold",
                "0.3",
                "--json",
                str(out),
            ],
        )
    )

    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == figures, "the last stdout line is the JSON"
    assert "Threshold sweep" in result.stdout
    assert (figures["documents"], figures["questions"], figures["answerable"], figures["should_hand_off"]) == (
        4,
        6,
        4,
        2,
    )
    assert figures["threshold"] == 0.3
    # Questions about things the articles never mention are handed off; the others are answered from them.
    assert figures["handoff_recall"] == 1.0
    assert figures["answered_answerable"] >= 3
    assert figures["f1_answered"] > 0.3
    for key in ("handoff_precision", "handoff_f1", "needless_handoff_rate", "f1_answerable", "f1_answered"):
        assert 0.0 <= figures[key] <= 1.0, key
    assert set(figures["splits"]) == {"even", "odd"}
    assert figures["splits"]["even"]["questions"] == figures["splits"]["odd"]["questions"] == 3
    assert 0.0 <= figures["tuned_on_even"]["threshold"] < 1.0
    sweep = figures["sweep"]
    assert [row["threshold"] for row in sweep] == sorted({*TABLE_THRESHOLDS, 0.3})
    assert sweep[0]["handed_off"] <= sweep[-1]["handed_off"], "a higher threshold hands off at least as often"
    chosen = next(row for row in sweep if row["threshold"] == 0.3)
    assert chosen["handoff_f1"] == figures["handoff_f1"], "the sweep reproduces the deployed responder's decisions"


def test_eval_answers_is_listed_next_to_eval_retrieval() -> None:
    result = in_thread(lambda: CliRunner().invoke(app, ["eval", "--help"]))

    assert result.exit_code == 0, result.output
    assert "answers" in result.stdout
    assert "retrieval" in result.stdout
