import pytest

from support.config import Settings, SettingsError, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.env) == ("127.0.0.1", 8000, "dev")


def test_top_level_and_nested_variables_are_read() -> None:
    settings = load_settings(
        {
            "SUPPORT_PORT": "9001",
            "SUPPORT_DATABASE_URL": "postgresql://db/support",
            "SUPPORT_DB__POOL_SIZE": "3",
            "SUPPORT_EMBEDDING__PROVIDER": "http",
            "SUPPORT_EMBEDDING__URL": "http://embeddings.internal/v1",
            "SUPPORT_LOG_JSON": "true",
            "SUPPORT_LLM__START_DEADLINE_S": "12.5",
            "OTHER_VARIABLE": "ignored",
        }
    )
    assert settings.port == 9001
    assert settings.database_url == "postgresql://db/support"
    assert settings.db.pool_size == 3
    assert settings.embedding.provider == "http"
    assert settings.json_logs is True
    assert settings.llm.start_deadline_s == 12.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://a.example, https://b.example", ("https://a.example", "https://b.example")),
        ('["https://c.example"]', ("https://c.example",)),
        ("", ()),
    ],
    ids=["comma-separated", "json-array", "empty"],
)
def test_list_settings_accept_commas_or_json(value: str, expected: tuple[str, ...]) -> None:
    assert load_settings({"SUPPORT_HTTP__CORS_ORIGINS": value}).http.cors_origins == expected


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"SUPPORT_PORT": "eighty"}, "SUPPORT_PORT"),
        ({"SUPPORT_PORT": "70000"}, "SUPPORT_PORT"),
        ({"SUPPORT_DB__POOL_SIZE": "0"}, "SUPPORT_DB__POOL_SIZE"),
        ({"SUPPORT_LLM__START_DEADLINE_S": "0"}, "SUPPORT_LLM__START_DEADLINE_S"),
        ({"SUPPORT_ENV": "staging"}, "SUPPORT_ENV"),
        ({"SUPPORT_COLOUR": "blue"}, "SUPPORT_COLOUR"),
        ({"SUPPORT_DB__COLOUR": "blue"}, "SUPPORT_DB__COLOUR"),
        # Tracebacks from the drivers or the JSON decoder until 2026-12-07 (found by an exploratory test)
        ({"SUPPORT_HTTP__CORS_ORIGINS": "[bad"}, "SUPPORT_HTTP__CORS_ORIGINS"),
        ({"SUPPORT_DATABASE_URL": "mysql://x"}, "SUPPORT_DATABASE_URL"),
        ({"SUPPORT_DATABASE_URL": "not a url"}, "SUPPORT_DATABASE_URL"),
        ({"SUPPORT_VALKEY_URL": "http://x"}, "SUPPORT_VALKEY_URL"),
        ({"SUPPORT_EMBEDDING__PROVIDER": "http"}, "SUPPORT_EMBEDDING__URL"),
    ],
    ids=[
        "not-a-number",
        "out-of-range",
        "below-minimum",
        "no-start-deadline",
        "unknown-choice",
        "unknown-variable",
        "unknown-nested",
        "list-not-json",
        "database-not-postgres",
        "database-not-a-url",
        "valkey-not-valkey",
        "http-embedder-without-url",
    ],
)
def test_bad_values_are_refused_naming_the_variable(environment: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environment)
    message = str(raised.value)
    assert message.startswith(f"{named}:")
    assert "\n" not in message


def test_test_and_bench_variables_are_not_settings() -> None:
    settings = load_settings({"SUPPORT_TEST_DATABASE_URL": "x", "SUPPORT_BENCH_SIZE": "1"})
    assert settings.database_url is None


def test_production_logs_are_json_by_default() -> None:
    assert load_settings({"SUPPORT_ENV": "prod"}).json_logs is True
    assert load_settings({"SUPPORT_ENV": "dev"}).json_logs is False
