"""A dependency that stays unreachable fills the log with one line a minute, not a traceback a second."""

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from support.observability import RepeatedOutageFilter


def failing(logger: logging.Logger, error: BaseException) -> None:
    try:
        raise error
    except type(error):
        logger.exception("Upkeep task failed unexpectedly")


def test_an_unreachable_server_is_one_line_without_a_traceback_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("saq.test-outage")
    outage = RepeatedOutageFilter(every_s=60)
    logger.addFilter(outage)
    try:
        with caplog.at_level(logging.ERROR, logger="saq.test-outage"):
            for _ in range(30):  # SAQ's upkeep, once a second while Valkey is down
                failing(logger, RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
            failing(logger, ValueError("a bug, not an outage"))
    finally:
        logger.removeFilter(outage)

    outage_lines = [record for record in caplog.records if "Connection refused" in record.getMessage()]
    assert len(outage_lines) == 1
    assert outage_lines[0].exc_info is None
    assert "ConnectionError" in outage_lines[0].getMessage()
    bug = [record for record in caplog.records if record.exc_info and isinstance(record.exc_info[1], ValueError)]
    assert len(bug) == 1  # other errors keep their traceback


def test_the_lines_left_out_are_counted_on_the_next_one(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("saq.test-outage-count")
    outage = RepeatedOutageFilter(every_s=60, clock=lambda: now[0])
    logger.addFilter(outage)
    try:
        with caplog.at_level(logging.ERROR, logger="saq.test-outage-count"):
            for second in range(3):
                now[0] = float(second)
                failing(logger, OSError("Connection refused"))
            now[0] = 61.0
            failing(logger, OSError("Connection refused"))
    finally:
        logger.removeFilter(outage)

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert lines[1].endswith("(2 more like it in the last 60 s)")
