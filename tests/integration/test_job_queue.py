"""The SAQ job queue on a real Valkey: what a job's state shows before, while and after a worker runs it."""

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

import pytest

from support.adapters.valkey.jobs import SaqJobQueue
from support.ports.jobs import JobState, ProgressReporter

pytestmark = pytest.mark.valkey


async def test_a_queued_job_shows_its_initial_detail_until_the_worker_reports(valkey_url: str) -> None:
    queue = SaqJobQueue(valkey_url, name=f"jobs-{uuid4()}")
    await queue.connect()
    started = asyncio.Event()
    release = asyncio.Event()

    async def job(payload: Mapping[str, Any], report: ProgressReporter) -> Mapping[str, Any]:
        if payload["blocking"]:
            started.set()
            await release.wait()
        await report(0.5, {"total": 2, "done": 1})
        return {"total": 2, "done": 2}

    async def finished(job_id: str) -> JobState:
        async with asyncio.timeout(10):
            while (state := await queue.get(job_id)) is None or state.status != "complete":  # noqa: ASYNC110 - polled, as a client does
                await asyncio.sleep(0.05)
        return state

    queue.register("counting", job)
    queue.start_worker(concurrency=1)
    try:
        # The one worker is busy with a first job, so the second waits in the queue.
        await queue.enqueue("counting", {"blocking": True}, timeout_s=30)
        await asyncio.wait_for(started.wait(), 10)
        queued = await queue.enqueue("counting", {"blocking": False}, timeout_s=30, detail={"total": 2, "done": 0})
        assert (queued.status, queued.detail) == ("queued", {"total": 2, "done": 0})
        polled = await queue.get(queued.id)
        assert polled is not None
        # A client polling a job no worker has picked up yet still sees its counts.
        assert (polled.status, polled.detail) == ("queued", {"total": 2, "done": 0})

        release.set()
        state = await finished(queued.id)
        assert state.detail == {"total": 2, "done": 2}
    finally:
        release.set()
        await queue.close()


async def test_the_sweep_as_a_worker_starts_leaves_a_job_being_dequeued_alone(valkey_url: str) -> None:
    queue = SaqJobQueue(valkey_url, name=f"jobs-{uuid4()}")
    await queue.connect()
    try:
        queued = await queue.enqueue("early", {}, timeout_s=30)
        # What a starting worker does, step by step: its first dequeue moves the job to the active list (it is
        # marked active a moment later), and its first sweep runs beside it. That sweep aborted the job as "swept".
        dequeued = await queue._queue.dequeue()
        assert dequeued is not None
        assert dequeued.key == queued.id
        assert await queue._queue.sweep(abort=0.1) == []
        state = await queue.get(queued.id)
        assert state is not None
        assert state.error is None
    finally:
        await queue.close()


async def test_an_idle_worker_stops_without_a_warning(valkey_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # Every clean shutdown of `make run` logged "Some tasks did not finish within the shutdown grace period": the
    # worker's idle polling loops, which never finish by themselves.
    queue = SaqJobQueue(valkey_url, name=f"jobs-{uuid4()}")
    await queue.connect()

    async def job(payload: Mapping[str, Any], report: ProgressReporter) -> Mapping[str, Any]:
        return {}

    queue.register("nothing", job)
    queue.start_worker(concurrency=1)
    await asyncio.sleep(0.2)  # the worker is polling

    with caplog.at_level(logging.WARNING, logger="saq"):
        await queue.close()

    assert [record.getMessage() for record in caplog.records if record.name.startswith("saq")] == []
