"""Embedded PostgreSQL and Valkey of a fault-injection module's own: its tests stop and start them."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.cli import migrations
from support.devservers.postgres import EmbeddedPostgres
from support.devservers.valkey import EmbeddedValkey
from tests.conftest import in_thread


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    valkey: EmbeddedValkey
    database_url: str
    valkey_url: str


@contextmanager
def own_servers(folder: Path, *, durable_postgres: bool = False) -> Iterator[Servers]:
    """Start both servers in ``folder``, migrate, and stop them on exit (never the session's servers)."""
    postgres = EmbeddedPostgres(folder / "postgres", durable=durable_postgres)
    valkey = EmbeddedValkey(folder / "valkey", durable=False)
    try:
        database_url = postgres.start()
        valkey_url = valkey.start()
        in_thread(lambda: migrations.upgrade(database_url))
        yield Servers(postgres, valkey, database_url, valkey_url)
    finally:
        valkey.stop()
        postgres.stop()
