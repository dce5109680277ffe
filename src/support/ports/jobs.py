"""Ports for background work."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class JobState:
    """A background job as its submitter sees it."""

    id: str
    kind: str
    status: str  # queued | active | complete | failed | aborted
    progress: float
    detail: Mapping[str, Any]
    error: str | None


ProgressReporter = Callable[[float, Mapping[str, Any]], Awaitable[None]]


class JobQueue(Protocol):
    """A durable queue of named jobs whose state and progress can be read back by id.

    Raises (every method):
        CacheUnavailableError: the queue's store cannot be reached.
    """

    async def enqueue(
        self, kind: str, payload: Mapping[str, Any], *, timeout_s: int, detail: Mapping[str, Any] | None = None
    ) -> JobState:
        """Queue a job; a worker runs the handler registered for ``kind``.

        ``detail`` is what the job's state shows until the handler first reports progress (the counts a caller
        polling a queued job sees).
        """
        ...

    async def get(self, job_id: str) -> JobState | None:
        """The job's current state, or None when unknown (or expired)."""
        ...
