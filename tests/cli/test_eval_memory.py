"""``support eval memory``: the multi-conversation scripts of tests/data through the memory use cases.

The hashing embedder keeps it fast; ``support eval memory`` (ONNX MiniLM by default) is the reported run.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.adapters.embedding.hashing import HashingEmbedder
from support.cli.main import app
from support.cli.memory import DEFAULT_SCRIPTS, load_scripts, run_scripts
from tests.conftest import in_thread

# The share of scripts answered correctly that the patterns, supersede rules and recall must keep.
FLOOR = 0.9


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_the_scripts_are_multi_conversation_and_enough() -> None:
    scripts = load_scripts(DEFAULT_SCRIPTS)

    assert len(scripts) >= 30
    assert len({script.id for script in scripts}) == len(scripts)
    later = [script for script in scripts if len(script.conversations) > 1 or script.ask.day > 0]
    assert len(later) == len(scripts), "every question comes in a later conversation"
    contradicting = [script for script in scripts if script.stale and script.expect]
    assert len(contradicting) >= 10


def test_eval_memory_reports_the_share_answered_correctly(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"

    result = in_thread(
        lambda: CliRunner().invoke(
            app, ["eval", "memory", "--scripts", str(DEFAULT_SCRIPTS), "--embedder", "hashing", "--json", str(out)]
        )
    )

    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == figures, "the last stdout line is the JSON"
    assert figures["scripts"] == len(load_scripts(DEFAULT_SCRIPTS))
    assert figures["share_correct"] == round(figures["correct"] / figures["scripts"], 4)
    assert figures["share_correct"] >= FLOOR, figures["failures"]
    assert figures["embedder"].startswith("hashing")


async def test_a_wrong_expectation_or_a_stale_value_counts_as_wrong(tmp_path: Path) -> None:
    path = tmp_path / "scripts.json"
    path.write_text(
        json.dumps(
            {
                "scripts": [
                    {
                        "id": "right",
                        "conversations": [{"day": 0, "messages": ["My order number is NW-1001."]}],
                        "ask": {"day": 1, "question": "Where is my order?"},
                        "expect": [{"key": "order_number", "value": "NW-1001"}],
                    },
                    {
                        "id": "expects-the-old-value",
                        "conversations": [
                            {"day": 0, "messages": ["My order number is NW-1001."]},
                            {"day": 2, "messages": ["Sorry, my order number is actually NW-1002."]},
                        ],
                        "ask": {"day": 3, "question": "Where is my order?"},
                        "expect": [{"key": "order_number", "value": "NW-1001"}],
                    },
                    {
                        "id": "the-newer-value-is-called-stale",
                        "conversations": [{"day": 0, "messages": ["I'm on the Pro plan."]}],
                        "ask": {"day": 1, "question": "What does my plan cost?"},
                        "stale": ["Pro"],
                    },
                ]
            }
        )
    )

    outcomes = await run_scripts(load_scripts(path), HashingEmbedder(384))

    assert [outcome.correct for outcome in outcomes] == [True, False, False]
    assert outcomes[1].missing == ("order_number=NW-1001",)
    assert outcomes[2].leaked == ("Pro",)


def test_eval_memory_is_listed_with_the_other_evaluations() -> None:
    result = in_thread(lambda: CliRunner().invoke(app, ["eval", "--help"]))

    assert result.exit_code == 0, result.output
    assert "memory" in result.stdout
