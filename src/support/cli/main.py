import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from support.config import Settings, SettingsError, load_settings
from support.domain.identity import Role
from support.observability import configure_logging

app = typer.Typer(
    name="support",
    help="Self-hostable AI customer support: answers from your help center, remembers customers, hands off to humans.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

console = Console(stderr=True)
T = TypeVar("T")
R = TypeVar("R")


def _settings(**overrides: object) -> Settings:
    try:
        settings = load_settings(None, **{key: value for key, value in overrides.items() if value is not None})
    except SettingsError as error:
        console.print(f"[red]Invalid setting[/red] {error}")
        raise typer.Exit(2) from None
    configure_logging(settings)
    return settings


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: SUPPORT_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: SUPPORT_PORT or 8000].")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations before serving.")] = True,
) -> None:
    """Serve the API; starts embedded PostgreSQL and Valkey when no SUPPORT_DATABASE_URL / SUPPORT_VALKEY_URL is set."""
    import uvicorn

    from support.cli import migrations
    from support.container import create_app
    from support.devservers.runtime import running_servers

    settings = _settings(host=host, port=port)
    with running_servers(settings) as ready:
        if migrate:
            migrations.upgrade(ready.require_database_url())
        application = create_app(ready)
        _print_banner(ready)
        uvicorn.run(
            application,
            host=ready.host,
            port=ready.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            ws="websockets-sansio",
        )


def _print_banner(settings: Settings) -> None:
    base = f"http://{settings.host}:{settings.port}"
    console.print(f"\n[bold]support[/bold] is starting on [link={base}]{base}[/link]")
    console.print(f"  API docs    {base}/schema")
    console.print(f"  OpenAPI     {base}/schema/openapi.json")
    console.print(f"  Readiness   {base}/health/ready")
    if settings.bootstrap_admin_key:
        console.print("  Admin key   the value of SUPPORT_BOOTSTRAP_ADMIN_KEY")
    console.print(
        "  Admin key   in another terminal: [cyan].venv/bin/support keys create --role admin --name me[/cyan]"
    )
    console.print(f"  Try it      curl -s {base}/health/ready\n")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION."""
    from support.cli import migrations

    _with_database(lambda url: migrations.upgrade(url, revision))


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")] = "-1") -> None:
    """Revert migrations down to REVISION."""
    from support.cli import migrations

    _with_database(lambda url: migrations.downgrade(url, revision))


@db_app.command("current")
def db_current() -> None:
    """Show the revision the database is at."""
    from support.cli import migrations

    _with_database(migrations.current)


def _with_database(action: Callable[[str], None]) -> None:
    from support.devservers.runtime import running_servers

    with running_servers(_settings(), valkey=False) as ready:
        action(ready.require_database_url())


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
) -> None:
    """Create an API key and print its secret (shown once; only a hash is stored)."""
    from support.application.keys import CreateApiKey

    issued = _run_use_case(CreateApiKey, lambda use_case: use_case.execute(name, role))
    console.print(f"Created {issued.key.role} key [bold]{issued.key.name}[/bold] ({issued.key.id}).")
    console.print("The secret is shown only this once:", style="yellow")
    typer.echo(issued.secret)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (secrets are never shown)."""
    from rich.table import Table

    from support.application.keys import ListApiKeys

    keys = _run_use_case(ListApiKeys, lambda use_case: use_case.execute())
    table = Table("id", "name", "role", "hint", "created", "state")
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.role,
            key.hint + "…",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            "active" if key.is_active else "revoked",
        )
    Console().print(table)


def _run_use_case(use_case_type: type[T], call: Callable[[T], Awaitable[R]]) -> R:
    from support.container import build_container
    from support.devservers.runtime import running_servers

    async def run(settings: Settings) -> R:
        container = build_container(settings)
        try:
            async with container() as request:
                use_case = await request.get(use_case_type)
                return await call(use_case)
        finally:
            await container.close()

    with running_servers(_settings(), valkey=False) as ready:
        return asyncio.run(run(ready))


def main() -> None:
    """Entry point of the ``support`` command."""
    logging.captureWarnings(capture=True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
