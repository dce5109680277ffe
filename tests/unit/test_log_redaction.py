"""Secrets that reach a log line leave it as placeholders (JSON and console logs alike)."""

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from support.config import Settings
from support.observability import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("json_logs", [True, False])
def test_log_lines_are_redacted(capfd: pytest.CaptureFixture[str], *, json_logs: bool) -> None:
    configure_logging(Settings(log_json=json_logs, log_level="info"))

    logging.getLogger("support.test").warning("customer wrote: card %s, password: %s", "4111 1111 1111 1111", "hunter2")
    structlog.get_logger("support.test").warning("token seen", token="sk-ant-api03-abcdefghijklmnop123")

    output = capfd.readouterr().err
    assert "[card number]" in output
    assert "[password]" in output
    assert "[secret]" in output
    for secret in ("4111 1111 1111 1111", "hunter2", "sk-ant-api03"):
        assert secret not in output
    if json_logs:
        events = [json.loads(line)["event"] for line in output.strip().splitlines()]
        assert events[0] == "customer wrote: card [card number], password: [password]"


@pytest.mark.parametrize("json_logs", [True, False])
def test_tracebacks_carry_neither_local_variables_nor_secrets(
    capfd: pytest.CaptureFixture[str], *, json_logs: bool
) -> None:
    configure_logging(Settings(log_json=json_logs, log_level="info"))

    def handle(authorization: str) -> None:
        raise ValueError("refused key " + authorization)

    try:
        handle("Bearer sk-ant-api03-abcdefghijklmnop123")
    except ValueError:
        logging.getLogger("support.test").exception("unhandled error")

    output = capfd.readouterr().err
    assert "ValueError" in output
    assert "sk-ant-api03" not in output
    assert "authorization =" not in output.lower()
