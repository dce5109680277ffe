"""``support serve`` as a real process: embeds PostgreSQL and Valkey, stops them on Ctrl-C, reuses its data.

No database or Valkey URL is given, so each run starts embedded servers under its own ``SUPPORT_DATA_DIR``; two
runs on one folder share them, and the last to stop stops them.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import pytest

from support.devservers.postgres import free_port

pytestmark = pytest.mark.slow

SUPPORT = Path(sys.executable).with_name("support")
BOOTSTRAP_KEY = "serve-process-bootstrap-key"
READY_WITHIN_S = 30.0
EXIT_WITHIN_S = 15.0


def _server_processes(data_dir: Path) -> list[str]:
    """``pid command`` of every process whose command line or working directory is inside ``data_dir``.

    PostgreSQL's postmaster keeps ``-D <dir>`` in its command line; valkey-server rewrites its title to
    ``host:port`` but runs in its ``--dir``.
    """
    marker = str(data_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = str((entry / "cwd").readlink())
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
        if command and (marker in command or cwd.startswith(marker)) and int(entry.name) != os.getpid():
            found.append(f"{entry.name} {command}")
    return found


class Serve:
    """One ``support serve`` process with its output in files (no pipe to fill up and block it)."""

    def __init__(self, data_dir: Path, *, bootstrap_key: str | None = None, sample_data: bool = False) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stdout = data_dir.parent / f"serve-{self.port}.out"
        self._stderr = data_dir.parent / f"serve-{self.port}.err"
        env = {name: value for name, value in os.environ.items() if not name.startswith("SUPPORT_")}
        env |= {"SUPPORT_DATA_DIR": str(data_dir), "SUPPORT_PORT": str(self.port), "SUPPORT_LOG_LEVEL": "warning"}
        if sample_data:  # the setting, as a deployment would set it (make run passes --sample-data)
            env["SUPPORT_KNOWLEDGE__LOAD_SAMPLE_DATA"] = "true"
        if bootstrap_key:
            env["SUPPORT_BOOTSTRAP_ADMIN_KEY"] = bootstrap_key
        with self._stdout.open("wb") as stdout, self._stderr.open("wb") as stderr:
            self.process = subprocess.Popen(  # noqa: S603 - the project's own console script
                [str(SUPPORT), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
            )

    @property
    def output(self) -> str:
        return self._stdout.read_text(errors="replace") + self._stderr.read_text(errors="replace")

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"support serve exited with {self.process.returncode}:\n{self.output}")
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while not self.is_ready():
            if time.monotonic() > deadline:
                pytest.fail(f"not ready within {READY_WITHIN_S:g} s:\n{self.output}")
            time.sleep(0.1)

    def interrupt(self) -> int:
        """Ctrl-C; return the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_S:g} s after SIGINT:\n{self.output}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Whatever happened: no process of this run outlives the test."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for line in _server_processes(self.data_dir):
            pid = int(line.split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _assert_no_server_left(data_dir: Path) -> None:
    deadline = time.monotonic() + 3.0  # pg_ctl -w returns when the postmaster is gone; allow for stragglers
    while (left := _server_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"still running after the app exited: {left}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "data"
    yield folder
    assert not _server_processes(folder), "a server of this test outlived it"


def test_serve_embeds_servers_stops_them_on_ctrl_c_and_reuses_its_data(data_dir: Path) -> None:
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as first:
        first.wait_ready()
        assert f"http://127.0.0.1:{first.port}" in first.output
        assert f"http://127.0.0.1:{first.port}/schema" in first.output
        servers = _server_processes(data_dir)
        assert any("postgres" in line for line in servers), servers
        assert any("valkey" in line for line in servers), servers
        created = httpx.post(
            f"{first.base_url}/v1/keys",
            json={"name": "survivor", "role": "admin"},
            headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]

        assert first.interrupt() == 0, first.output
        _assert_no_server_left(data_dir)

    with Serve(data_dir) as second:  # no bootstrap key: only the stored key can authenticate
        second.wait_ready()
        listed = httpx.get(f"{second.base_url}/v1/keys", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert listed.status_code == 200, listed.text
        assert [item["name"] for item in listed.json()["items"]] == ["survivor"]

        assert second.interrupt() == 0, second.output
        _assert_no_server_left(data_dir)


def test_two_instances_with_their_own_data_folders_run_side_by_side(tmp_path: Path) -> None:
    folders = [tmp_path / "one", tmp_path / "two"]
    with Serve(folders[0], bootstrap_key=BOOTSTRAP_KEY) as one, Serve(folders[1], bootstrap_key=BOOTSTRAP_KEY) as two:
        one.wait_ready()
        two.wait_ready()
        # Both at once, each on its own servers: a key created in one is unknown to the other.
        assert one.is_ready()
        assert two.is_ready()
        admin = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
        created = httpx.post(f"{one.base_url}/v1/keys", json={"name": "one", "role": "admin"}, headers=admin)
        assert created.status_code == 201, created.text
        elsewhere = httpx.get(
            f"{two.base_url}/v1/keys", headers={"Authorization": f"Bearer {created.json()['secret']}"}
        )
        assert elsewhere.status_code == 401, elsewhere.text

        assert one.interrupt() == 0, one.output
        assert two.is_ready(), "stopping one instance must not touch the other's servers"
        assert two.interrupt() == 0, two.output
    for folder in folders:
        _assert_no_server_left(folder)


def test_a_second_serve_on_the_data_folder_keeps_its_servers_when_the_first_stops(data_dir: Path) -> None:
    """The servers belong to the data folder: stopping the serve that started them left the other one without."""
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as first:
        first.wait_ready()
        with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as second:
            second.wait_ready()  # on the servers the first started

            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(EXIT_WITHIN_S) == 0, first.output
            assert second.is_ready(), "stopping one serve took the servers from the other"
            keys = httpx.get(f"{second.base_url}/v1/keys", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
            assert keys.status_code == 200, keys.text

            assert second.interrupt() == 0, second.output  # the last one to stop stops them
            _assert_no_server_left(data_dir)


def test_servers_left_by_a_killed_serve_are_stopped_by_the_next_one(data_dir: Path) -> None:
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as killed:
        killed.wait_ready()
        killed.process.kill()  # SIGKILL: nothing of it runs to stop the servers
        killed.process.wait()
        assert _server_processes(data_dir)

        with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as serve:
            serve.wait_ready()  # on the servers the killed one left
            assert serve.interrupt() == 0, serve.output
            _assert_no_server_left(data_dir)


def test_sigterm_stops_serve_and_the_servers_it_started(data_dir: Path) -> None:
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY) as serve:
        serve.wait_ready()
        assert _server_processes(data_dir)

        # What systemd, a container runtime or a process manager sends to stop it.
        serve.process.send_signal(signal.SIGTERM)
        try:
            code = serve.process.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_S:g} s after SIGTERM:\n{serve.output}")

        assert code == 0, serve.output
        _assert_no_server_left(data_dir)


def test_sigterm_while_starting_stops_the_servers_already_started(data_dir: Path) -> None:
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY, sample_data=True) as serve:
        # PostgreSQL is serving (initdb's bootstrap has no checkpointer); migrations, the sample help center and the
        # app are still to come.
        deadline = time.monotonic() + READY_WITHIN_S
        while not any("checkpointer" in line for line in _server_processes(data_dir)):
            assert time.monotonic() < deadline, serve.output
            time.sleep(0.02)
        assert not serve.is_ready()

        serve.process.send_signal(signal.SIGTERM)
        try:
            serve.process.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_S:g} s after SIGTERM:\n{serve.output}")

        _assert_no_server_left(data_dir)


def test_the_sample_help_center_setting_loads_it_at_start(data_dir: Path) -> None:
    with Serve(data_dir, bootstrap_key=BOOTSTRAP_KEY, sample_data=True) as serve:
        serve.wait_ready()
        listed = httpx.get(
            f"{serve.base_url}/v1/knowledge/documents",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
            timeout=10,
        )
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["items"]) == 24  # the Northwind Supply articles
        assert serve.interrupt() == 0, serve.output
