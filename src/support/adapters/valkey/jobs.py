import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from saq import Worker
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.types import Context

from support.adapters.valkey.errors import cache_errors
from support.ports.jobs import JobState, ProgressReporter

_logger = logging.getLogger(__name__)
# Finished jobs stay readable for a day.
RESULT_TTL_S = 24 * 3600

# Pause after a failed dequeue (Valkey unreachable), doubling up to the cap while it keeps failing.
_DEQUEUE_RETRY_MIN_S = 0.1
_DEQUEUE_RETRY_MAX_S = 5.0

JobHandler = Callable[[Mapping[str, Any], ProgressReporter], Awaitable[Mapping[str, Any]]]


def redis_protocol_url(url: str) -> str:
    """SAQ's client (redis-py) speaks to Valkey, but only knows the redis:// schemes."""
    for scheme, replacement in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(scheme):
            return replacement + url[len(scheme) :]
    return url


def _state(job: Job) -> JobState:
    meta = job.meta or {}
    detail = dict(job.result) if isinstance(job.result, dict) else dict(meta.get("detail", {}))
    return JobState(
        id=job.key,  # the job's own key; SAQ's job.id adds the queue's namespace
        kind=job.function,
        status=job.status.value if job.status.value != "new" else "queued",
        progress=float(job.progress or 0.0),
        detail=detail,
        # A retried job keeps the error of the attempt before (a worker cancelled by a restart): shown only when
        # the job ended by it, not beside "active" while the retry runs.
        error=(job.error or "").strip().splitlines()[-1] if job.error and job.status in _ENDED_BADLY else None,
    )


_ENDED_BADLY = frozenset({Status.FAILED, Status.ABORTED})


class _PacedQueue(RedisQueue):
    """SAQ's Valkey queue, pausing after a failed dequeue, and not sweeping as its worker starts.

    SAQ's worker starts the next dequeue as soon as one fails, so without a pause it spins a core for as long as
    Valkey is unreachable.

    SAQ's worker also sweeps the queue the moment it starts, beside its first dequeue. A dequeue moves a job to the
    active list before marking it active, and the sweep aborts any job in that list not marked active: a job that
    was queued before the process started was aborted as "swept" in two of three tries. The first sweep is skipped;
    the next, a sweep interval later, still clears jobs a crashed process left behind.
    """

    _pause_s = _DEQUEUE_RETRY_MIN_S
    _started_sweeping = False

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        if not self._started_sweeping:
            self._started_sweeping = True
            return []
        return await super().sweep(lock, abort)

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:  # noqa: ASYNC109 - SAQ's signature
        try:
            job = await super().dequeue(timeout, poll_interval)
        except Exception:
            await asyncio.sleep(self._pause_s)
            self._pause_s = min(self._pause_s * 2, _DEQUEUE_RETRY_MAX_S)
            raise
        self._pause_s = _DEQUEUE_RETRY_MIN_S
        return job


class _EmbeddedWorker(Worker[Context]):
    # The worker lives inside the API process: the server (uvicorn) owns SIGINT/SIGTERM and stops us in order.
    SIGNALS = []  # noqa: RUF012


class SaqJobQueue:
    """Jobs on a Valkey-backed SAQ queue; ``run_worker`` processes them in this process."""

    def __init__(self, url: str, name: str) -> None:
        self._queue = _PacedQueue.from_url(redis_protocol_url(url), name=name)
        self._handlers: dict[str, JobHandler] = {}
        self._worker_task: asyncio.Task[None] | None = None
        self._worker: _EmbeddedWorker | None = None
        self._running = 0  # jobs this process is running now

    async def connect(self) -> None:
        async with cache_errors():
            await self._queue.connect()

    async def close(self) -> None:
        if self._worker is not None:
            if self._running == 0:
                # Only the worker's idle polling loops are left: stopped here, SAQ's stop does not wait its grace
                # period for them and warn that "some tasks did not finish" on every clean shutdown.
                self._worker.event.set()  # no new polling loop replaces a cancelled one
                idle = list(self._worker.tasks)
                for task in idle:
                    task.cancel()
                await asyncio.gather(*idle, return_exceptions=True)
            await self._worker.stop()
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self._queue.disconnect()

    def register(self, kind: str, handler: JobHandler) -> None:
        self._handlers[kind] = handler

    def start_worker(self, concurrency: int = 1) -> None:
        functions = [(kind, self._wrap(kind)) for kind in self._handlers]
        # A grace period above zero: SAQ's stop waits it out even for tasks already finished when it is zero.
        self._worker = _EmbeddedWorker(
            self._queue, functions=functions, concurrency=concurrency, shutdown_grace_period_s=1
        )
        self._worker_task = asyncio.create_task(self._worker.start(), name="job-worker")

    def _wrap(self, kind: str) -> Callable[..., Awaitable[Mapping[str, Any]]]:
        handler = self._handlers[kind]

        async def run(ctx: Context, **payload: Any) -> Mapping[str, Any]:
            job = ctx["job"]

            async def report(progress: float, detail: Mapping[str, Any]) -> None:
                await job.update(progress=progress, meta={"detail": dict(detail)})

            self._running += 1
            try:
                return await handler(payload, report)
            finally:
                self._running -= 1

        run.__qualname__ = kind
        return run

    async def enqueue(
        self, kind: str, payload: Mapping[str, Any], *, timeout_s: int, detail: Mapping[str, Any] | None = None
    ) -> JobState:
        meta = {"detail": dict(detail)} if detail else {}
        async with cache_errors():
            job = await self._queue.enqueue(kind, timeout=timeout_s, ttl=RESULT_TTL_S, retries=1, meta=meta, **payload)
        if job is None:
            msg = "the queue refused the job"
            raise RuntimeError(msg)
        return _state(job)

    async def get(self, job_id: str) -> JobState | None:
        async with cache_errors():
            job = await self._queue.job(job_id)
        return None if job is None else _state(job)
