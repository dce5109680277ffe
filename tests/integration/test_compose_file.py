"""compose.yaml, Dockerfile and .dockerignore agree with the code (Docker itself is not needed to check this).

The image cannot be built here, so these tests check what would otherwise fail only at deploy time: every
``SUPPORT_*`` variable is a real setting with a valid value, the URLs point at the compose services with their
credentials, health checks exist, and every ``support ...`` command the containers run exists in the CLI.
"""

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from support.cli.main import app as cli
from support.config import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")
# Plausible values for variables that compose takes from the operator's environment.
OPERATOR_ENV = {
    "SUPPORT_BOOTSTRAP_ADMIN_KEY": "a" * 64,
    "SUPPORT_CONVERSATIONS__TOKEN_SECRET": "b" * 64,
    "ANTHROPIC_API_KEY": "sk-ant-test",
}


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``, enough for these files."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if environ.get(name):
            return environ[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg or ""

    return INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture(scope="module")
def app_environment(services: dict[str, Any]) -> dict[str, str]:
    """The app container's environment as compose would pass it, with the operator's variables set."""
    raw = services["app"]["environment"]
    assert isinstance(raw, dict), "write the app's environment as a mapping"
    return {str(key): _interpolate(str(value), OPERATOR_ENV) for key, value in raw.items()}


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def _support_commands(shell: str) -> list[list[str]]:
    """The ``support ...`` invocations in a shell command line (``a && exec b; c``)."""
    commands = []
    for part in re.split(r"&&|\|\||;", shell):
        words = shlex.split(part)
        while words and words[0] in {"exec", "env"}:
            words = words[1:]
        if words and Path(words[0]).name == "support":
            commands.append(words)
    return commands


def _assert_cli_accepts(words: list[str]) -> None:
    """The subcommand and every option exist: click parses all arguments before it honours ``--help``."""
    result = CliRunner().invoke(cli, [*words[1:], "--help"])
    assert result.exit_code == 0, f"`{shlex.join(words)}` is not a valid command: {result.output}"


def _stage(dockerfile: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    """The instructions of one build stage (``-1``: the final, runtime stage)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages[index]


def test_compose_runs_postgres_valkey_and_the_app(services: dict[str, Any]) -> None:
    assert {"postgres", "valkey", "app"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg")
    assert services["valkey"]["image"].startswith("valkey/valkey:")
    assert services["app"]["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / services["app"]["build"]["context"] / "Dockerfile").is_file()


def test_every_service_has_a_health_check(services: dict[str, Any]) -> None:
    postgres = " ".join(services["postgres"]["healthcheck"]["test"])
    valkey = " ".join(services["valkey"]["healthcheck"]["test"])
    app = services["app"]["healthcheck"]["test"]
    assert "pg_isready" in postgres
    assert "valkey-cli ping" in valkey
    assert app[:2] == ["CMD", "python"], "slim images have no curl: probe with python"
    assert "/health/ready" in app[-1]
    # The probe is real Python that compiles.
    compile(app[-1], "<healthcheck>", "exec")


def test_app_starts_only_once_its_dependencies_are_healthy(services: dict[str, Any]) -> None:
    depends_on = services["app"]["depends_on"]
    assert depends_on == {
        "postgres": {"condition": "service_healthy"},
        "valkey": {"condition": "service_healthy"},
    }


def test_data_lives_in_named_volumes_and_valkey_appends_to_its_log(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("valkey", "/data")):
        mounts = dict(str(volume).split(":", 1) for volume in services[name]["volumes"])
        volume = next((source for source, path in mounts.items() if path == target), None)
        assert volume in declared, f"{name} should keep {target} in a named volume"
    assert "--appendonly yes" in " ".join(services["valkey"]["command"])


def test_app_environment_is_made_of_real_settings(app_environment: dict[str, str]) -> None:
    support_variables = {key: value for key, value in app_environment.items() if key.startswith("SUPPORT_")}
    assert support_variables, "the app is configured through SUPPORT_* variables"
    for key, value in support_variables.items():
        try:
            load_settings({key: value})
        except SettingsError as error:
            pytest.fail(f"compose.yaml sets {key}={value!r}, which the app refuses: {error}")
    settings = load_settings(support_variables)
    assert settings.env == "prod"
    assert settings.host == "0.0.0.0"  # noqa: S104 - inside a container, published by compose
    assert settings.bootstrap_admin_key == OPERATOR_ENV["SUPPORT_BOOTSTRAP_ADMIN_KEY"]


def test_an_invalid_value_would_be_caught_by_these_checks() -> None:
    with pytest.raises(SettingsError, match="SUPPORT_PORT"):
        load_settings({"SUPPORT_PORT": "eight thousand"})
    with pytest.raises(SettingsError, match="SUPPORT_DATABSE_URL"):
        load_settings({"SUPPORT_DATABSE_URL": "postgresql://x"})


def test_bootstrap_key_is_required_and_the_llm_key_optional(services: dict[str, Any]) -> None:
    raw = services["app"]["environment"]
    assert re.fullmatch(r"\$\{SUPPORT_BOOTSTRAP_ADMIN_KEY:\?.+\}", raw["SUPPORT_BOOTSTRAP_ADMIN_KEY"])
    # prod refuses to start without a customer-token secret, so compose must demand one
    assert re.fullmatch(r"\$\{SUPPORT_CONVERSATIONS__TOKEN_SECRET:\?.+\}", raw["SUPPORT_CONVERSATIONS__TOKEN_SECRET"])
    assert re.fullmatch(r"\$\{ANTHROPIC_API_KEY:-\}", raw["ANTHROPIC_API_KEY"])
    with pytest.raises(ValueError, match="SUPPORT_BOOTSTRAP_ADMIN_KEY"):
        _interpolate(raw["SUPPORT_BOOTSTRAP_ADMIN_KEY"], {})
    assert _interpolate(raw["ANTHROPIC_API_KEY"], {}) == ""


def test_app_urls_point_at_the_compose_services_with_their_credentials(
    services: dict[str, Any], app_environment: dict[str, str]
) -> None:
    settings = load_settings({key: value for key, value in app_environment.items() if key.startswith("SUPPORT_")})
    database = urlsplit(settings.require_database_url())
    postgres_env = services["postgres"]["environment"]
    assert database.scheme == "postgresql+asyncpg"
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.username == postgres_env["POSTGRES_USER"]
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    valkey = urlsplit(settings.require_valkey_url())
    assert (valkey.scheme, valkey.hostname, valkey.port) == ("valkey", "valkey", 6379)


def test_app_publishes_the_port_it_listens_on(services: dict[str, Any], app_environment: dict[str, str]) -> None:
    settings = load_settings({key: value for key, value in app_environment.items() if key.startswith("SUPPORT_")})
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in services["app"]["ports"]]
    assert str(settings.port) in published
    assert f":{settings.port}/health/ready" in services["app"]["healthcheck"]["test"][-1]


def test_app_command_runs_migrations_then_serves_with_real_cli_commands(services: dict[str, Any]) -> None:
    command = services["app"]["command"]
    shell = command[-1] if isinstance(command, list) else command
    commands = _support_commands(shell)
    assert [words[1:2] for words in commands] == [["db"], ["serve"]]
    assert commands[0][:3] == ["support", "db", "upgrade"]
    assert "--no-migrate" in commands[1]
    for words in commands:
        _assert_cli_accepts(words)


def test_cli_check_rejects_commands_that_do_not_exist() -> None:
    with pytest.raises(AssertionError):
        _assert_cli_accepts(["support", "serve", "--no-such-option"])
    with pytest.raises(AssertionError):
        _assert_cli_accepts(["support", "database", "upgrade"])


def test_dockerfile_builds_on_python_311_slim_with_the_pinned_uv(dockerfile: list[tuple[str, str]]) -> None:
    bases = [arguments.split()[0] for keyword, arguments in dockerfile if keyword == "FROM"]
    assert bases, "no FROM"
    assert all(base == "python:3.11-slim" for base in bases), bases
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    assert any("pip install" in run and "--require-hashes -r" in run and "uv-requirements.txt" in run for run in runs)


def test_dockerfile_installs_locked_dependencies_in_their_own_layer(dockerfile: list[tuple[str, str]]) -> None:
    build = _stage(dockerfile, 0)
    position = {
        "deps": next(i for i, (k, a) in enumerate(build) if k == "RUN" and "--no-install-project" in a),
        "source": next(i for i, (k, a) in enumerate(build) if k == "COPY" and a.split()[0] == "src"),
    }
    assert position["deps"] < position["source"], "dependencies must be installed before the source is copied"
    syncs = [arguments for keyword, arguments in build if keyword == "RUN" and "uv sync" in arguments]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync
        assert "--no-dev" in sync
        assert "--all-extras" not in sync
        assert "embedded" not in sync


def test_dockerfile_runs_as_a_non_root_user_and_exposes_the_port(dockerfile: list[tuple[str, str]]) -> None:
    runtime = _stage(dockerfile, -1)
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", "8000") in runtime


def test_dockerfile_environment_is_made_of_real_settings(dockerfile: list[tuple[str, str]]) -> None:
    variables: dict[str, str] = {}
    for keyword, arguments in dockerfile:
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                variables[name] = value
    support = {key: value for key, value in variables.items() if key.startswith("SUPPORT_")}
    assert isinstance(load_settings(support), Settings)


def test_the_image_derives_the_embedding_model_where_the_service_looks_for_it(
    dockerfile: list[tuple[str, str]], tmp_path: Path
) -> None:
    runtime = _stage(dockerfile, -1)
    variables = {
        name: value
        for keyword, arguments in runtime
        if keyword == "ENV"
        for name, _, value in (word.partition("=") for word in shlex.split(arguments))
    }
    cache_dir = variables["SUPPORT_EMBEDDING__MODEL_CACHE_DIR"]
    derivations = [
        (position, shlex.split(arguments)[2])
        for position, (keyword, arguments) in enumerate(runtime)
        if keyword == "RUN" and arguments.startswith("python -c") and "prepared_model_path" in arguments
    ]
    assert len(derivations) == 1, "the image must derive the model: its user cannot write a cache at run time"
    [(position, program)] = derivations
    assert f"Path('{cache_dir}')" in program
    assert position < runtime.index(("USER", "support")), "derived before the switch to the service user"
    # The program runs: here into a scratch directory instead of the image's.
    exec(compile(program.replace(f"Path('{cache_dir}')", f"Path({str(tmp_path)!r})"), "<RUN>", "exec"))  # noqa: S102
    assert any(tmp_path.glob("*.onnx"))


def test_dockerfile_command_exists_in_the_cli(dockerfile: list[tuple[str, str]]) -> None:
    commands = [arguments for keyword, arguments in dockerfile if keyword in {"CMD", "ENTRYPOINT"}]
    assert commands, "no CMD"
    words: list[str] = json.loads(commands[-1])  # exec form, so signals reach the server
    assert Path(words[0]).name == "support"
    _assert_cli_accepts(words)


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored(dockerfile: list[tuple[str, str]]) -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    }
    for required in (".git", ".venv", ".data", ".tools", ".env"):
        assert required in ignored, f".dockerignore should keep {required} out of the build context"
    for keyword, arguments in dockerfile:
        if keyword != "COPY" or "--from=" in arguments:
            continue
        sources = [word for word in arguments.split()[:-1] if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"
