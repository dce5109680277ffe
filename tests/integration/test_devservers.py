"""Embedded servers: a second process on the same data folder reuses the running server and leaves it running.

This is what lets `support keys create` run beside `make run`: the CLI finds the server the app started,
uses it, and its own ``stop()`` must not take the app's database away. ``running_servers`` stops them when the
data folder's last user leaves, whoever started them.
"""

import asyncio
import os
import pwd
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import pytest
from valkey.asyncio import Valkey
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from support.config import Settings, load_settings
from support.devservers.postgres import SYSTEM_USER, EmbeddedPostgres
from support.devservers.runtime import running_servers
from support.devservers.valkey import EmbeddedValkey, process_alive, wait_until_gone


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid
    raise AssertionError(f"no Uid line for process {pid}")


async def _select_one(url: str) -> int:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        value: int = await connection.fetchval("SELECT 1")
        return value
    finally:
        await connection.close()


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A dedicated throwaway cluster, stopped after the test whatever happened."""
    server = EmbeddedPostgres(tmp_path / "postgres", durable=False)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_second_embedded_postgres_on_a_folder_reuses_the_server_and_leaves_it_running(
    postgres: EmbeddedPostgres,
) -> None:
    pid = _postmaster_pid(postgres.data_dir)
    second = EmbeddedPostgres(postgres.data_dir, durable=False)

    assert await asyncio.to_thread(second.start) == postgres.url
    assert _postmaster_pid(postgres.data_dir) == pid, "a second server was started"
    await asyncio.to_thread(second.stop)

    assert process_alive(pid)
    assert await _select_one(postgres.url) == 1

    # The owner's stop() does stop it: the reuse above is not just stop() doing nothing.
    await asyncio.to_thread(postgres.stop)
    assert await asyncio.to_thread(wait_until_gone, pid, 10.0)


async def test_embedded_postgres_reuses_a_database_name_it_already_created(postgres: EmbeddedPostgres) -> None:
    other = EmbeddedPostgres(postgres.data_dir, durable=False, database="second_db")
    url = await asyncio.to_thread(other.start)
    assert url.endswith("/second_db")
    assert await _select_one(url) == 1
    # Starting again finds the database instead of failing to create it twice.
    assert await asyncio.to_thread(EmbeddedPostgres(postgres.data_dir, database="second_db").start) == url


async def test_embedded_postgres_never_runs_as_root(postgres: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(postgres.data_dir)
    if os.geteuid() == 0:
        expected = pwd.getpwnam(SYSTEM_USER).pw_uid
        assert expected != 0
    else:
        expected = os.geteuid()
    assert _uid_of(pid) == expected
    assert postgres.data_dir.stat().st_uid == expected
    assert postgres.data_dir.stat().st_mode & 0o077 == 0, "PostgreSQL wants its data folder private"


async def test_second_embedded_valkey_on_a_folder_reuses_the_server_and_leaves_it_running(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path / "valkey", durable=False)
    url = await asyncio.to_thread(first.start)
    client = Valkey.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        pid = int((first.data_dir / "server.port").read_text().split()[0])
        second = EmbeddedValkey(first.data_dir, durable=False)

        assert await asyncio.to_thread(second.start) == url
        await asyncio.to_thread(second.stop)

        assert process_alive(pid)
        assert await client.ping()

        await asyncio.to_thread(first.stop)
        assert await asyncio.to_thread(wait_until_gone, pid, 10.0)
        with pytest.raises(ValkeyConnectionError):
            await client.ping()
    finally:
        await client.aclose()
        await asyncio.to_thread(first.stop)


async def test_embedded_valkey_does_not_reuse_a_dead_servers_port_file(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path / "valkey", durable=False)
    await asyncio.to_thread(first.start)
    await asyncio.to_thread(first.kill)  # leaves server.port behind, as a crash would
    second = EmbeddedValkey(first.data_dir, durable=False)
    try:
        url = await asyncio.to_thread(second.start)
        client = Valkey.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        await asyncio.to_thread(second.stop)


def _settings_for(data: Path) -> Settings:
    return load_settings({"SUPPORT_DATA_DIR": str(data)})


async def _ping(url: str) -> bool:
    client = Valkey.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def test_the_data_folders_last_user_stops_its_servers_whoever_started_them(tmp_path: Path) -> None:
    """``support serve`` A starts the servers, B beside it reuses them; A stops first: B keeps them, and stops them.

    A CLI command beside a serve (``keys create``) leaves them to the serve, whichever of them started them.
    """
    settings = _settings_for(tmp_path / "data")
    with ExitStack() as cleanup:
        first = running_servers(settings)
        ready = first.__enter__()
        cleanup.callback(first.__exit__, None, None, None)
        data = settings.data_path
        postgres_pid = _postmaster_pid(data / "postgres")
        valkey_pid = int((data / "valkey" / "server.port").read_text().split()[0])

        with running_servers(settings) as command:  # a CLI command that comes and goes
            assert (command.database_url, command.valkey_url) == (ready.database_url, ready.valkey_url)
        assert asyncio.run(_select_one(ready.require_database_url())) == 1

        second = running_servers(settings)
        assert second.__enter__() == ready
        cleanup.pop_all()
        first.__exit__(None, None, None)  # the process that started them leaves first
        try:
            assert asyncio.run(_select_one(ready.require_database_url())) == 1
            assert asyncio.run(_ping(ready.require_valkey_url()))
        finally:
            second.__exit__(None, None, None)

    assert wait_until_gone(postgres_pid, 10.0)
    assert wait_until_gone(valkey_pid, 10.0)
    assert not list((data / "users").iterdir())


def test_servers_no_live_process_uses_are_adopted_and_stopped_by_the_next_user(tmp_path: Path) -> None:
    """What a ``support serve`` killed with SIGKILL leaves: servers running, and its registration, unlocked."""
    settings = _settings_for(tmp_path / "data")
    data = settings.data_path
    orphans = EmbeddedPostgres(data / "postgres", durable=False), EmbeddedValkey(data / "valkey", durable=False)
    with ExitStack() as cleanup:
        for orphan in orphans:
            orphan.start()
            cleanup.callback(orphan.stop)
        (data / "users").mkdir()
        (data / "users" / "4194304-dead.user").write_text("4194304 support serve\n")
        postgres_pid = _postmaster_pid(data / "postgres")
        valkey_pid = int((data / "valkey" / "server.port").read_text().split()[0])

        with running_servers(settings) as ready:
            assert ready.database_url == orphans[0].url
            assert ready.valkey_url == orphans[1].url

        assert wait_until_gone(postgres_pid, 10.0)
        assert wait_until_gone(valkey_pid, 10.0)
        assert not list((data / "users").iterdir())
