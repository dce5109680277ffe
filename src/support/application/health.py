"""Readiness of the service's backing dependencies."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from support.ports.errors import DependencyUnavailableError
from support.ports.system import HealthProbe

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class DependencyStatus:
    """One dependency's state: ``ok``, or what is wrong with it."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether every dependency answers."""

    ok: bool
    dependencies: tuple[DependencyStatus, ...]


class CheckReadiness:
    """Probe every dependency concurrently, each bounded by a timeout, and report which are down."""

    def __init__(self, probes: Sequence[HealthProbe], timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._probes = probes
        self._timeout_s = timeout_s

    async def execute(self) -> Readiness:
        """Return the readiness report; never raises for a failing dependency."""
        statuses = await asyncio.gather(*(self._probe(probe) for probe in self._probes))
        return Readiness(ok=all(status.ok for status in statuses), dependencies=tuple(statuses))

    async def _probe(self, probe: HealthProbe) -> DependencyStatus:
        try:
            await asyncio.wait_for(probe.check(), self._timeout_s)
        except TimeoutError:
            return DependencyStatus(probe.name, ok=False, detail=f"no answer within {self._timeout_s:g} s")
        except DependencyUnavailableError as error:
            return DependencyStatus(probe.name, ok=False, detail=error.message)
        return DependencyStatus(probe.name, ok=True, detail="ok")
