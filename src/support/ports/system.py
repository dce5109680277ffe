"""Ports for time, transactions and health."""

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """The current time, injectable so tests control it."""

    def now(self) -> datetime:
        """An aware UTC datetime."""
        ...


class UnitOfWork(Protocol):
    """One business transaction: repositories of the same request write through it.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def commit(self) -> None:
        """Make every change since the last commit durable and visible."""
        ...

    async def rollback(self) -> None:
        """Discard every change since the last commit."""
        ...


class HealthProbe(Protocol):
    """Checks that one backing service answers."""

    @property
    def name(self) -> str:
        """The dependency's name as readiness reports it (``postgres``, ``valkey``)."""
        ...

    async def check(self) -> None:
        """Return when the dependency answers.

        Raises:
            DependencyUnavailableError: it does not.
        """
        ...
