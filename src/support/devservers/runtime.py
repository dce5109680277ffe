"""Resolve the servers a process needs: configured URLs, or embedded servers under the data folder.

The embedded PostgreSQL and Valkey belong to the data folder, not to the process that happened to start them.
Every process that uses them (``support serve``, and ``support keys create``, ``kb ingest``, ``db upgrade`` … beside
it) registers as a *user* while it runs: a file ``users/<pid>-….user`` under the data folder, on which it holds an
exclusive ``flock``. The last user to leave stops the servers, whoever started them. Until 12-07 the process that
started them stopped them: stopping one of two ``support serve`` on a folder took the servers from the other, and
servers left by a ``serve`` killed with SIGKILL were reused and never stopped.

A lock dies with its process, so a killed user stops counting at once (no stale pid to trust: a pid may be reused),
and the servers it left are adopted: the next user to leave stops them. Registering and starting, and leaving and
stopping, hold ``servers.lock``: a process that arrives while the last user stops the servers waits, then starts
them again.
"""

import contextlib
import fcntl
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import msgspec

from support.config import Settings
from support.devservers.postgres import EmbeddedPostgres
from support.devservers.valkey import EmbeddedValkey

_logger = logging.getLogger(__name__)

USERS_FOLDER = "users"
LOCK_FILE = "servers.lock"


@contextmanager
def running_servers(settings: Settings, *, valkey: bool = True) -> Iterator[Settings]:
    """Yield ``settings`` with database and Valkey URLs filled in, starting embedded servers where none is set.

    The process uses the data folder's embedded servers (started here, or already running) until the block exits;
    the last process to stop using them stops them.
    """
    embed_postgres = not settings.database_url
    embed_valkey = valkey and not settings.valkey_url
    if not (embed_postgres or embed_valkey):
        yield settings
        return
    data = settings.data_path
    postgres = EmbeddedPostgres(data / "postgres") if embed_postgres else None
    server = EmbeddedValkey(data / "valkey") if embed_valkey else None
    updates: dict[str, str] = {}
    with ExitStack() as stack:
        with _servers_lock(data):
            user = _register(data)
            # Before starting: a start cut short (SIGTERM) still leaves, and stops what it started.
            stack.callback(_leave, data, user, postgres, server)
            if postgres is not None:
                updates["database_url"] = postgres.start()
            if server is not None:
                updates["valkey_url"] = server.start()
        yield msgspec.structs.replace(settings, **updates)


@contextmanager
def _servers_lock(data: Path) -> Iterator[None]:
    data.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class _User:
    """This process's registration: its file, locked for as long as the process uses the servers."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self.descriptor = descriptor

    def leave(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.descriptor)


def _register(data: Path) -> _User:
    folder = data / USERS_FOLDER
    folder.mkdir(exist_ok=True)
    # A file of its own (pids repeat: across PID namespaces, or reused), locked at once: whoever reads the folder
    # holds the servers' lock, which this process holds now.
    descriptor, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".user", dir=folder)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    os.write(descriptor, f"{os.getpid()} {command}\n".encode())
    return _User(Path(name), descriptor)


def _live_users(data: Path, me: _User | None) -> list[str]:
    live = []
    folder = data / USERS_FOLDER
    for path in sorted(folder.glob("*.user")) if folder.is_dir() else []:
        if me is not None and path == me.path:
            continue
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # its process holds it: alive
            live.append(path.read_text(errors="replace").strip() or path.name)
        else:  # nobody holds it: its process died without leaving (SIGKILL, a crash)
            path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)
    return live


def _leave(data: Path, user: _User, postgres: EmbeddedPostgres | None, server: EmbeddedValkey | None) -> None:
    """Stop using the servers; the last user stops them, also those it did not start or use."""
    with _servers_lock(data):
        others = _live_users(data, user)
        user.leave()
        if others:
            _logger.info("embedded servers in %s keep running for %s", data, "; ".join(f"pid {u}" for u in others))
            return
        # The objects that started a server stop it themselves (a Valkey started here is this process's child).
        (server or EmbeddedValkey(data / "valkey")).stop_running()
        if postgres is not None:
            postgres.stop_running()
        elif (data / "postgres" / "postmaster.pid").exists():
            EmbeddedPostgres(data / "postgres").stop_running()
