from datetime import datetime
from typing import Literal

import msgspec
from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from support.application.health import CheckReadiness
from support.config import Settings


class ServiceInfo(msgspec.Struct, frozen=True):
    name: str
    version: str
    environment: str
    links: dict[str, str]


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["ok"]
    started_at: datetime


class DependencyState(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


class ReadinessReport(msgspec.Struct, frozen=True):
    status: Literal["ready", "not_ready"]
    dependencies: list[DependencyState]
    down: list[str]


class SystemController(Controller):
    tags = ["system"]  # noqa: RUF012

    @get("/", operation_id="GetServiceInfo", summary="Service name, version and links", include_in_schema=True)
    @inject
    async def root(self, settings: FromDishka[Settings], state: State) -> ServiceInfo:
        return ServiceInfo(
            name="support",
            version=state.version,
            environment=settings.env,
            links={
                "docs": "/schema",
                "openapi": "/schema/openapi.json",
                "liveness": "/health/live",
                "readiness": "/health/ready",
            },
        )

    @get("/health/live", operation_id="GetLiveness", summary="Liveness: the process is running")
    async def live(self, state: State) -> Liveness:
        return Liveness(status="ok", started_at=state.started_at)

    @get(
        "/health/ready",
        operation_id="GetReadiness",
        summary="Readiness: PostgreSQL and Valkey answer",
        description="200 when every dependency answers; 503 with the same body naming what is down.",
        responses={
            503: ResponseSpec(
                ReadinessReport, description="A dependency is down; retry after `Retry-After`", generate_examples=False
            )
        },
    )
    @inject
    async def ready(self, check: FromDishka[CheckReadiness]) -> Response[ReadinessReport]:
        readiness = await check.execute()
        report = ReadinessReport(
            status="ready" if readiness.ok else "not_ready",
            dependencies=[DependencyState(d.name, d.ok, d.detail) for d in readiness.dependencies],
            down=[d.name for d in readiness.dependencies if not d.ok],
        )
        headers = {} if readiness.ok else {"Retry-After": "2"}
        return Response(report, status_code=200 if readiness.ok else 503, headers=headers)
