"""Logging setup: structlog JSON lines in production, readable console lines in development.

Every line carries the request id (bound in a context variable by the request-id middleware).
"""

import logging
import sys
import time
from collections.abc import Callable

import structlog

from support.config import Settings
from support.domain.privacy import redact


def configure_logging(settings: Settings) -> None:
    """Route stdlib and structlog logging through one structlog pipeline."""
    level = getattr(logging, settings.log_level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text before redaction, in development too: the console renderer's own (rich)
            # tracebacks would come after it and print every frame's local variables, request headers included.
            structlog.processors.format_exc_info,
            _redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log is replaced by ours (with request id and duration).
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # SAQ retries its upkeep about once a second while Valkey is unreachable, each time with a 45-line traceback:
    # 4,500 lines in 90 s of outage (found by an exploratory test).
    saq = logging.getLogger("saq")
    saq.filters[:] = [filter_ for filter_ in saq.filters if not isinstance(filter_, RepeatedOutageFilter)]
    saq.addFilter(RepeatedOutageFilter())


class RepeatedOutageFilter(logging.Filter):
    """One line, without its traceback, per message and minute for failures that only say a server is unreachable.

    The count of those left out goes with the next one let through; other errors pass untouched.
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged; a let-through outage record loses its traceback and counts the rest."""
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _unreachable(error):
            return True
        message, now = record.getMessage(), self._clock()
        last = self._last.get(message)
        if last is not None and now - last < self._every_s:
            self._left_out[message] = self._left_out.get(message, 0) + 1
            return False
        self._last[message] = now
        left_out = self._left_out.pop(message, 0)
        record.msg = f"{message}: {type(error).__name__}: {error}" + (
            f" ({left_out} more like it in the last {self._every_s:g} s)" if left_out else ""
        )
        record.args = ()
        record.exc_info = record.exc_text = None
        return True


def _unreachable(error: BaseException) -> bool:
    """A connection that failed or timed out, in the standard library's terms or a Redis/Valkey client's."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError | TimeoutError) or bool(names & {"ConnectionError", "TimeoutError"})


def _redact_secrets(_logger: object, _name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """Card numbers, passwords, keys and tokens that reached a log line leave it as placeholders."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict
