"""``support eval escalation``: scripted conversations through the escalation policy, precision/recall per reason."""

import json
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from support.application.escalation_eval import (
    EscalationReport,
    EscalationScript,
    EvaluateEscalation,
    ModelBehaviour,
    ScriptedTurn,
    Verdict,
)
from support.config import SettingsError, load_settings
from support.domain.conversations import HandoffAction, ReasonCode

# The scripts kept with the tests, found from this file so the command works from any folder of a checkout.
DEFAULT_SCRIPTS = Path(__file__).resolve().parents[3] / "tests" / "data" / "escalation_scripts.json"
NO_TRIGGER = "none"

console = Console(stderr=True)


class _Expect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: HandoffAction
    reason_code: ReasonCode | None


class _Turn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: str
    model: ModelBehaviour
    expect: _Expect


class _Conversation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    trigger: str
    turns: list[_Turn]
    note: str = ""


class _ScriptFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    conversations: list[_Conversation]
    description: str = ""


def load_scripts(path: Path) -> list[EscalationScript]:
    """The scripted conversations in ``path`` (see ``tests/data/escalation_scripts.json``).

    Raises:
        ValueError: the file does not fit the format (a message names what is wrong).
    """
    try:
        parsed = msgspec.json.decode(path.read_bytes(), type=_ScriptFile)
    except msgspec.ValidationError as error:
        raise ValueError(str(error)) from None
    scripts: list[EscalationScript] = []
    for item in parsed.conversations:
        if item.trigger != NO_TRIGGER and item.trigger not in {code.value for code in ReasonCode}:
            msg = f"{item.id}: trigger {item.trigger!r} is neither a reason code nor {NO_TRIGGER!r}"
            raise ValueError(msg)
        turns: list[ScriptedTurn] = []
        for index, turn in enumerate(item.turns):
            try:
                turns.append(
                    ScriptedTurn(turn.customer, turn.model, Verdict(turn.expect.action, turn.expect.reason_code))
                )
            except ValueError as error:
                msg = f"{item.id}, turn {index}: {error}"
                raise ValueError(msg) from None
        trigger = None if item.trigger == NO_TRIGGER else ReasonCode(item.trigger)
        scripts.append(EscalationScript(item.id, trigger, tuple(turns)))
    return scripts


def eval_escalation(
    scripts: Annotated[
        Path | None,
        typer.Option(help="Scripted conversations (JSON) [default: tests/data/escalation_scripts.json]."),
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help="Print only the figures, as JSON.")] = False,
) -> None:
    """Run scripted conversations through the escalation policy and score its decisions turn by turn.

    The policy is the configured one (SUPPORT_HANDOFF__POLICY_FILE, else the built-in); the model is replaced by
    each turn's scripted behaviour. Prints precision/recall/F1 per reason code (a turn predicts a reason when it
    offers a person or hands over for it), action accuracy, the confusion of actions, every mismatch, and the
    figures as JSON on the last line.
    """
    from support.container.app import escalation_policy

    path = scripts or DEFAULT_SCRIPTS
    try:
        items = load_scripts(path)
        policy = escalation_policy(load_settings(None))
    except OSError as error:
        console.print(f"[red]Cannot read the scripts[/red] {error}")
        raise typer.Exit(2) from None
    except SettingsError as error:
        console.print(f"[red]Invalid setting[/red] {error}")
        raise typer.Exit(2) from None
    except ValueError as error:
        console.print(f"[red]The scripts do not fit the format[/red] ({path}): {error}")
        raise typer.Exit(2) from None
    report = EvaluateEscalation(policy).execute(items)
    figures = _figures(report, path.name)
    if json_only:
        typer.echo(json.dumps(figures, indent=2, ensure_ascii=False))
        return
    _print(report, path.name)
    typer.echo(json.dumps(figures, ensure_ascii=False))


def _figures(report: EscalationReport, name: str) -> dict[str, object]:
    return {
        "scripts": name,
        "conversations": report.conversations,
        "turns": report.turns,
        "exact": report.exact,
        "action_accuracy": round(report.action_accuracy, 4),
        "macro_f1": round(report.macro_f1, 4),
        "reasons": {
            score.reason.value: {
                "precision": round(score.precision, 4),
                "recall": round(score.recall, 4),
                "f1": round(score.f1, 4),
                "support": score.support,
                "predicted": score.predicted,
            }
            for score in report.reasons
        },
        "confusion": {
            expected.value: {got.value: count for got, count in row.items()}
            for expected, row in report.confusion.items()
        },
        "mismatches": [
            {
                "conversation": item.script_id,
                "turn": item.turn,
                "expected": str(item.expected),
                "got": str(item.got),
                "rule": item.rule,
            }
            for item in report.mismatches
        ],
    }


def _print(report: EscalationReport, name: str) -> None:
    out = Console()
    reasons = Table(
        "reason", "support", "predicted", "precision", "recall", "F1",
        title=f"Escalation on {name}: {report.conversations} conversations, {report.turns} turns",
        caption=(
            f"{report.exact}/{report.turns} turns exactly right (action and reason); action accuracy "
            f"{report.action_accuracy:.3f}; macro F1 {report.macro_f1:.3f}. A turn predicts a reason when it offers "
            "a person or hands over for it."
        ),
    )  # fmt: skip
    for score in report.reasons:
        reasons.add_row(
            score.reason.value, str(score.support), str(score.predicted),
            f"{score.precision:.3f}", f"{score.recall:.3f}", f"{score.f1:.3f}",
        )  # fmt: skip
    out.print(reasons)
    actions = Table("expected \\ got", *(action.value for action in HandoffAction), title="Actions")
    for expected, row in report.confusion.items():
        actions.add_row(expected.value, *(str(row[got]) for got in HandoffAction))
    out.print(actions)
    if report.mismatches:
        mismatches = Table(title="Mismatches")
        for column in ("conversation", "turn", "expected", "got", "rule"):
            mismatches.add_column(column, no_wrap=True)
        mismatches.add_column("customer", ratio=1)
        for item in report.mismatches:
            mismatches.add_row(
                item.script_id, str(item.turn), str(item.expected), str(item.got), item.rule or "", item.customer
            )
        out.print(mismatches)
