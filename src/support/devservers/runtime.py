"""Resolve the servers a process needs: configured URLs, or embedded servers under the data folder."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import msgspec

from support.config import Settings
from support.devservers.postgres import EmbeddedPostgres
from support.devservers.valkey import EmbeddedValkey


@contextmanager
def running_servers(settings: Settings, *, valkey: bool = True) -> Iterator[Settings]:
    """Yield ``settings`` with database and Valkey URLs filled in, starting embedded servers where none is set.

    Servers started here stop when the block exits; servers already running on the data folder are reused.
    """
    updates: dict[str, str] = {}
    with ExitStack() as stack:
        if not settings.database_url:
            postgres = EmbeddedPostgres(settings.data_path / "postgres")
            # Registered before starting: a start cut short (SIGTERM) still stops what it started.
            stack.callback(postgres.stop)
            updates["database_url"] = postgres.start()
        if valkey and not settings.valkey_url:
            server = EmbeddedValkey(settings.data_path / "valkey")
            stack.callback(server.stop)
            updates["valkey_url"] = server.start()
        yield msgspec.structs.replace(settings, **updates)
