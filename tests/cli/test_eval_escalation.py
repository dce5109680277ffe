"""``support eval escalation``: the tables, the JSON figures, the default script set, and a malformed file."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.cli.main import app

SCRIPTS = {
    "conversations": [
        {
            "id": "asks",
            "trigger": "customer_request",
            "turns": [
                {
                    "customer": "Can I speak to a human?",
                    "model": "answer",
                    "expect": {"action": "escalate", "reason_code": "customer_request"},
                }
            ],
        },
        {
            "id": "wrong-on-purpose",
            "trigger": "none",
            "turns": [
                {
                    "customer": "Do you ship to Mars?",
                    "model": "miss",
                    "expect": {"action": "answer", "reason_code": None},
                }
            ],
        },
    ]
}


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the built-in policy (no policy file from the environment) and a wide table."""
    for name in [name for name in os.environ if name.startswith("SUPPORT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")


def test_eval_escalation_prints_a_table_per_reason_and_the_figures_as_json(tmp_path: Path) -> None:
    path = tmp_path / "scripts.json"
    path.write_text(json.dumps(SCRIPTS))

    result = CliRunner().invoke(app, ["eval", "escalation", "--scripts", str(path)])

    assert result.exit_code == 0, result.output
    assert "Escalation on scripts.json: 2 conversations, 2 turns" in result.stdout
    assert "insufficient_evidence" in result.stdout
    assert "Mismatches" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert (figures["conversations"], figures["turns"], figures["exact"]) == (2, 2, 1)
    assert figures["reasons"]["customer_request"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "support": 1,
        "predicted": 1,
    }
    assert figures["reasons"]["insufficient_evidence"]["predicted"] == 1
    assert figures["confusion"]["answer"] == {"answer": 0, "offer_human": 1, "escalate": 0}
    assert figures["mismatches"] == [
        {
            "conversation": "wrong-on-purpose",
            "turn": 0,
            "expected": "answer",
            "got": "offer_human/insufficient_evidence",
            "rule": "insufficient_evidence.offer",
        }
    ]


def test_json_prints_only_the_figures_of_the_default_script_set() -> None:
    result = CliRunner().invoke(app, ["eval", "escalation", "--json"])

    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["scripts"] == "escalation_scripts.json"
    assert figures["conversations"] >= 40
    assert set(figures["reasons"]) == {
        "customer_request",
        "frustration",
        "repeated_failure",
        "insufficient_evidence",
        "sensitive_topic",
        "llm_unavailable",
    }


def test_a_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripts.json"
    broken = json.loads(json.dumps(SCRIPTS))
    broken["conversations"][0]["turns"][0]["expect"]["reason_code"] = None
    path.write_text(json.dumps(broken))

    result = CliRunner().invoke(app, ["eval", "escalation", "--scripts", str(path)])

    assert result.exit_code == 2
    assert "asks, turn 0" in result.output


def test_eval_escalation_is_listed_with_the_other_evaluations() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"])

    assert result.exit_code == 0, result.output
    assert "escalation" in result.stdout
