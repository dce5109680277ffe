import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import typer
from dishka import AsyncContainer, Provider
from rich.console import Console

from support.cli.answers import eval_answers
from support.cli.chat import chat
from support.cli.escalation import eval_escalation
from support.cli.knowledge import eval_app, kb_app
from support.cli.memory import eval_memory
from support.config import Settings, SettingsError, load_settings
from support.domain.errors import InvalidInputError
from support.domain.identity import ApiKey, Role
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
app.add_typer(kb_app, name="kb")
app.add_typer(eval_app, name="eval")
# `eval retrieval` is declared with the knowledge commands; `eval answers` runs the offline responder;
# `eval escalation` plays scripted conversations through the escalation policy.
eval_app.command("answers")(eval_answers)
# `eval memory` plays multi-conversation scripts through customer memory (no servers needed).
eval_app.command("memory")(eval_memory)
eval_app.command("escalation")(eval_escalation)
# `chat`: a customer's side of a conversation against a running server.
app.command("chat")(chat)

# soft_wrap: commands in the banner stay on one line (copyable) in logs and CI, not just in terminals.
console = Console(stderr=True, soft_wrap=True)
_QUIET_LEVEL = "warning"
T = TypeVar("T")
R = TypeVar("R")


def _settings(*, serving: bool = False, **overrides: object) -> Settings:
    try:
        settings = load_settings(None, **{key: value for key, value in overrides.items() if value is not None})
    except SettingsError as error:
        console.print(f"[red]Invalid setting[/red] {error}")
        raise typer.Exit(2) from None
    if serving or "SUPPORT_LOG_LEVEL" in os.environ:
        configure_logging(settings)
    else:
        # An admin command's output is its result (`export KEY=$(support keys create …)` in a terminal): the
        # servers' and migrations' info lines would read as part of it. SUPPORT_LOG_LEVEL brings them back.
        configure_logging(msgspec.structs.replace(settings, log_level=_QUIET_LEVEL))
    return settings


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: SUPPORT_HOST, else 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: SUPPORT_PORT, else 8000).")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations before serving.")] = True,
    sample_data: Annotated[
        bool, typer.Option(help="Load the sample help center (Northwind Supply) before serving; unchanged is skipped.")
    ] = False,
) -> None:
    """Serve the API; starts embedded PostgreSQL and Valkey when no SUPPORT_DATABASE_URL / SUPPORT_VALKEY_URL is set."""
    import uvicorn

    from support.api.streaming import live_feeds, open_replies
    from support.cli import migrations
    from support.cli.server import FeedEndingServer
    from support.container import check_settings, create_app
    from support.devservers.runtime import running_servers

    settings = _settings(serving=True, host=host, port=port)
    if sample_data:
        settings = _with_sample_hours(settings)
    try:
        check_settings(settings)
    except SettingsError as error:
        console.print(f"[red]Invalid setting[/red] {error}")
        raise typer.Exit(2) from None
    _ensure_address_free(settings.host, settings.port)
    # SIGTERM's default action ends the process on the spot, leaving the servers started below running: while they
    # start (and the app migrates, loads samples, derives the model) it unwinds instead. uvicorn has its own
    # handlers while it serves; after it, nothing interrupts stopping them.
    main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    if main_thread:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with running_servers(settings) as ready, _uninterrupted_exit() if main_thread else nullcontext():
        if migrate:
            try:
                migrations.upgrade(ready.require_database_url())
            except migrations.DatabaseUnreachableError as error:
                console.print(f"[red]{error}[/red]")
                raise typer.Exit(1) from None
        if sample_data or ready.knowledge.load_sample_data:
            _load_sample_data(ready)
        application = create_app(ready)
        _print_banner(ready)
        config = uvicorn.Config(
            application,
            host=ready.host,
            port=ready.port,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
        )
        grace_s = ready.http.shutdown_grace_s
        FeedEndingServer(config, live_feeds(application), open_replies(application), grace_s).run()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _uninterrupted_exit() -> Iterator[None]:
    """On the way out of the block (served, failed or signalled), ignore SIGINT and SIGTERM while servers stop."""
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ensure_address_free(host: str, port: int) -> None:
    """Stop before starting anything when the API's address is taken (a second ``make run``, another program).

    uvicorn would find out only after the servers, the migrations, the sample data and the banner.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            if error.errno == errno.EADDRINUSE:
                console.print(
                    f"[red]Cannot listen on {host}:{port}[/red] ({reason}): another [cyan]support serve[/cyan] "
                    "(a second [cyan]make run[/cyan]?) or another program has it. Stop it, or choose another port "
                    "with --port or SUPPORT_PORT."
                )
            else:  # a privileged port, an address this machine does not have, a host name that does not resolve
                console.print(
                    f"[red]Cannot listen on {host}:{port}[/red] ({reason}). Check --host / SUPPORT_HOST and "
                    "--port / SUPPORT_PORT."
                )
            raise typer.Exit(1) from None


def _with_sample_hours(settings: Settings) -> Settings:
    """The sample company's agents' hours, where no SUPPORT_HANDOFF__TIMEZONE/OPENS/CLOSES says otherwise."""
    from support.sample_data import AGENT_HOURS

    hours = {
        field: value for field, value in AGENT_HOURS.items() if f"SUPPORT_HANDOFF__{field.upper()}" not in os.environ
    }
    return msgspec.structs.replace(settings, handoff=msgspec.structs.replace(settings.handoff, **hours))


def _load_sample_data(settings: Settings) -> None:
    from support.cli.knowledge import ingest_with_progress, print_report
    from support.cli.sources import sample_sources
    from support.container import build_container

    async def run() -> None:
        container = build_container(settings)
        try:
            requests = list(sample_sources())
            report = await ingest_with_progress(container, requests, len(requests), label="Sample help center")
        finally:
            await container.close()
        print_report(report)

    asyncio.run(run())


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
    key = "$SUPPORT_BOOTSTRAP_ADMIN_KEY" if settings.bootstrap_admin_key else "<admin key>"
    console.print(f"  Chat (CLI)  [cyan].venv/bin/support chat --url {base} --key {key}[/cyan]")
    console.print(
        f'  Search      curl -s {base}/v1/knowledge/search -H "Authorization: Bearer {key}" '
        """-H 'content-type: application/json' -d '{"query": "how do I return a desk?"}'"""
    )
    # Double quotes: the shell must expand $SUPPORT_BOOTSTRAP_ADMIN_KEY (single quotes sent it literally).
    auth = f"-H \"Authorization: Bearer {key}\" -H 'content-type: application/json'"
    console.print(
        f"  Chat        ID=$(curl -s {base}/v1/conversations {auth} "
        """-d '{"customer": {"external_id": "demo"}}' """
        """| python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"""
    )
    console.print(
        f"              curl -sN {base}/v1/conversations/$ID/messages/stream {auth} "
        """-d '{"content": "How long do refunds take?"}'"""
    )
    console.print(f'  Follow      curl -sN {base}/v1/conversations/$ID/events -H "Authorization: Bearer {key}"')
    console.print(
        f"  Handoff     curl -s -X POST {base}/v1/conversations/$ID/handoff {auth}; "
        f'curl -s {base}/v1/handoffs -H "Authorization: Bearer {key}"\n'
    )


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
    from support.cli.migrations import DatabaseUnreachableError
    from support.devservers.runtime import running_servers

    with running_servers(_settings(), valkey=False) as ready:
        try:
            action(ready.require_database_url())
        except DatabaseUnreachableError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None


class KeyRole(StrEnum):
    """The roles an API key may have (customers get tokens, not keys)."""

    ADMIN = Role.ADMIN.value
    AGENT = Role.AGENT.value
    SERVICE = Role.SERVICE.value


@keys_app.command("create")
def keys_create(
    role: Annotated[KeyRole, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
) -> None:
    """Create an API key and print its secret (shown once; only a hash is stored)."""
    from support.application.keys import CreateApiKey

    issued = _run_use_case(CreateApiKey, lambda use_case: use_case.execute(name, Role(role.value)))
    console.print(f"Created {issued.key.role} key [bold]{issued.key.name}[/bold] ({issued.key.id}).")
    console.print("The secret is shown only this once:", style="yellow")
    typer.echo(issued.secret)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (secrets are never shown)."""
    from rich.table import Table

    from support.application.keys import MAX_PAGE_SIZE, ListApiKeys

    async def every_key(use_case: ListApiKeys) -> list[ApiKey]:
        keys: list[ApiKey] = []
        cursor = None
        while True:
            page = await use_case.execute(limit=MAX_PAGE_SIZE, cursor=cursor)
            keys.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return keys

    keys = _run_use_case(ListApiKeys, every_key)
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
    async def run(container: AsyncContainer, _: Settings) -> R:
        async with container() as request:
            return await call(await request.get(use_case_type))

    try:
        return with_container(run, valkey=False)
    except InvalidInputError as error:
        # What the use case refused (a name too long, say): one line, as the API's 422 would say it.
        console.print(f"[red]{error.message}[/red]")
        raise typer.Exit(1) from None


def with_container(
    action: Callable[[AsyncContainer, Settings], Awaitable[R]],
    *,
    valkey: bool = True,
    overrides: Sequence[Provider] = (),
    fresh_database: Path | None = None,
) -> R:
    """Run ``action`` with a container on migrated servers (configured, embedded, or a fresh throwaway one)."""
    from support.cli import migrations
    from support.container import build_container
    from support.devservers.postgres import EmbeddedPostgres
    from support.devservers.runtime import running_servers

    settings = _settings()
    with ExitStack() as stack:
        if fresh_database is not None:
            server = EmbeddedPostgres(fresh_database, durable=False)
            settings = msgspec.structs.replace(settings, database_url=server.start())
            stack.callback(server.stop)
        ready = stack.enter_context(running_servers(settings, valkey=valkey))
        migrations.upgrade(ready.require_database_url())

        async def run() -> R:
            container = build_container(ready, *overrides)
            try:
                return await action(container, ready)
            finally:
                await container.close()

        return asyncio.run(run())


def main() -> None:
    """Entry point of the ``support`` command."""
    logging.captureWarnings(capture=True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
