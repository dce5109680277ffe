"""Composition root: the only package that names concrete adapters.

``build_container(settings, *overrides)`` selects adapters from settings; tests pass override providers
(``override=True``) to swap one collaborator. ``create_app`` builds the container and the Litestar app.

| collaborator | production / make run / tests |
| --- | --- |
| ApiKeyRepository, UnitOfWork | PostgreSQL (advanced-alchemy) |
| HealthProbe list | PostgreSQL and Valkey |
| Clock | system clock |
| WebhookOutbox, WebhookRepository, WebhookDeliveryQueue | PostgreSQL (the outbox shares the request's session) |
| WebhookSender | httpx |
"""

from support.container.app import build_container, check_settings, create_app

__all__ = ("build_container", "check_settings", "create_app")
