"""Tasks started ahead of the code that awaits them."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def started_early(coroutine: Coroutine[Any, Any, T]) -> "asyncio.Task[T]":
    """Start ``coroutine`` now, for code that awaits it later if at all.

    A caller that fails first never awaits the task; its exception is retrieved here, so asyncio does not log it
    as "never retrieved" (a prefetched embedding, a lease try, a rate-limit verdict of a request that failed).
    """
    task = asyncio.create_task(coroutine)
    task.add_done_callback(_retrieve)
    return task


def _retrieve(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled():
        task.exception()
