"""Settings: one frozen msgspec struct tree, loaded from ``SUPPORT_*`` environment variables.

Top-level fields map to ``SUPPORT_<FIELD>`` (``SUPPORT_DATABASE_URL``); nested groups use ``__``
(``SUPPORT_LLM__MODEL``). Nothing here runs at import time: call :func:`load_settings` where the process starts.
"""

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

ENV_PREFIX = "SUPPORT_"
NESTING = "__"

Environment = Literal["dev", "test", "prod"]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PostgreSQL connection pool (``SUPPORT_DB__*``)."""

    pool_size: PositiveInt = 10
    max_overflow: Annotated[int, msgspec.Meta(ge=0)] = 10
    pool_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # A statement that runs longer than this is cancelled by the server (milliseconds).
    statement_timeout_ms: PositiveInt = 15_000
    # HNSW candidates per vector search (pgvector's default is 40). With the index's ef_construction of 400, 120
    # gives recall@10 ~0.97 against exact search at 100k chunks (100: 0.95-0.96), for ~0.15 ms more per search
    # (bench/retrieval.py, docs/knowledge.md).
    hnsw_ef_search: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 120
    echo: bool = False


class ValkeySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Valkey client (``SUPPORT_VALKEY__*``)."""

    max_connections: PositiveInt = 64
    socket_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    key_prefix: str = "support:"


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """HTTP server behaviour (``SUPPORT_HTTP__*``)."""

    cors_origins: tuple[str, ...] = ()
    # Largest request body accepted anywhere (uploads have their own, smaller limits).
    max_body_bytes: PositiveInt = 12 * 1024 * 1024
    # How long a stopping `support serve` lets replies being written finish (a long Claude reply takes 20-30 s);
    # the requests still waiting then are answered 503 (docs/faults.md).
    shutdown_grace_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class EmbeddingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Embedding model (``SUPPORT_EMBEDDING__*``): the local ONNX MiniLM, or an OpenAI-compatible endpoint."""

    provider: Literal["onnx", "http", "hashing"] = "onnx"
    # Must match the database's vector column (384 for MiniLM); checked at start.
    dimension: PositiveInt = 384
    # Texts per request to the HTTP endpoint (the local model embeds each text on its own).
    batch_size: PositiveInt = 32
    # Documents the local model embeds side by side, one core each; defaults to every core. Queries have a
    # worker of their own.
    threads: PositiveInt | None = None
    # Where the local model's int8 derivation is kept (derived at first start, ~60 MB); default
    # $XDG_CACHE_HOME/support/models, else ~/.cache/support/models.
    model_cache_dir: str | None = None
    url: str | None = None
    model: str = "text-embedding-3-small"
    api_key: str | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class KnowledgeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ingestion and retrieval (``SUPPORT_KNOWLEDGE__*``)."""

    max_document_bytes: PositiveInt = 10 * 1024 * 1024
    chunk_tokens: PositiveInt = 200
    chunk_overlap_tokens: Annotated[int, msgspec.Meta(ge=0)] = 30
    query_cache_ttl_s: PositiveInt = 24 * 3600
    # Load the sample help center when `support serve` starts (as `--sample-data` does, which `make run` passes);
    # articles already stored unchanged are skipped.
    load_sample_data: bool = False
    # Chunks flagged as instruction-like at ingestion: "flag" records them (they still reach the assistant, as
    # data); "quarantine" also leaves them out of the assistant's searches (docs/security.md).
    injection_policy: Literal["flag", "quarantine"] = "flag"


class LLMSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The assistant's model (``SUPPORT_LLM__*``): Claude when an Anthropic key is known, else the offline responder.

    ``api_key`` and ``base_url`` fall back to the SDK's own ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.
    """

    provider: Literal["auto", "anthropic", "offline"] = "auto"
    model: str = "claude-sonnet-4-6"
    max_tokens: PositiveInt = 1024
    # Unset: the model's default (newer models reject an explicit temperature; the adapter then drops it).
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    company_name: str = "our company"
    persona: str = "a friendly, precise customer-support assistant"
    api_key: str | None = None
    base_url: str | None = None
    # Per request to the provider: connecting and every read (the first byte, then each next one).
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # The longest one request round waits for Claude to start streaming, retries and backoff included (per read,
    # timeout_s alone would let a silent Claude hold a customer for (1 + max_retries) x timeout_s). A started
    # answer is governed by timeout_s only.
    start_deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    # Retries on 429/529/overload/connection errors, with exponential backoff and jitter.
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    # After this many replies in a row got no words from Claude (each after its retries), replies fail at once
    # (an apology and a handoff offer) for breaker_cooldown_s; then one reply at a time tries Claude again.
    breaker_failures: PositiveInt = 3
    breaker_cooldown_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Earlier turns given to the model, newest first, until this many tokens (estimated).
    history_token_budget: PositiveInt = 3000
    # Passages retrieved before the model is called.
    passages: PositiveInt = 5
    # Neighbouring chunks of each passage's document (each side) the model is given with it: the answer is often
    # next to the chunk that ranked (docs/llm-offline.md). The offline responder reads them for free; for Claude
    # each one is input tokens on every turn, hence a narrower default.
    context_chunks: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    claude_context_chunks: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    # Tool round trips (search_knowledge) allowed per reply.
    max_tool_rounds: Annotated[int, msgspec.Meta(ge=0)] = 2
    # Offline responder: below this evidence score it says it could not find the answer and offers a human.
    evidence_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.47

    def anthropic_key(self, environ: Mapping[str, str]) -> str | None:
        """The configured key, else the SDK's standard variable."""
        return self.api_key or environ.get("ANTHROPIC_API_KEY") or None

    def uses_claude(self, environ: Mapping[str, str]) -> bool:
        """Claude answers when asked to explicitly, or (``auto``) when a key is known."""
        if self.provider == "auto":
            return self.anthropic_key(environ) is not None
        return self.provider == "anthropic"


class ConversationSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Conversations, customer tokens and attachments (``SUPPORT_CONVERSATIONS__*``)."""

    # Signs customer tokens (HMAC-SHA256). Required in prod; elsewhere a random one is made per process.
    token_secret: str | None = None
    token_ttl_s: PositiveInt = 24 * 3600
    # Open conversations without activity for this long are closed by the background sweep.
    idle_close_after_s: PositiveInt = 24 * 3600
    sweep_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # A comment line goes out on idle SSE streams this often.
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # Open feeds and sockets check this often that their credentials still reach the conversation (a revoked key,
    # an expired token, an erased customer end them); a socket also checks before each message it sends.
    access_recheck_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Hot state (status, recent turns) kept in Valkey this long after the last activity.
    session_ttl_s: PositiveInt = 6 * 3600
    recent_messages: PositiveInt = 20
    # Events retained per conversation for resuming feeds.
    feed_retention: PositiveInt = 2000
    max_message_chars: PositiveInt = 8000
    max_attachments: PositiveInt = 5
    max_attachment_bytes: PositiveInt = 10 * 1024 * 1024
    # Attachment text given to the assistant per turn.
    attachment_context_chars: PositiveInt = 12_000
    # How long a send waits for a reply in progress in the same conversation before answering both.
    reply_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0


class SensitiveTopicRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A sensitive topic in a policy file: any pattern hands the conversation over at once."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,60}$")]
    patterns: list[str]
    # Found before a pattern's match in its sentence, it is not this topic ("how do I" before "cancel my plan").
    unless: list[str] = msgspec.field(default_factory=list)


class EscalationPolicyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The escalation policy file (TOML); every field given replaces the built-in default (docs/escalation.md)."""

    human_request_patterns: list[str] | None = None
    acceptance_pattern: str | None = None
    frustration_terms: list[str] | None = None
    profanity_terms: list[str] | None = None
    sensitive_topics: list[SensitiveTopicRule] | None = None
    # 0 switches the refund rule off.
    refund_amount_limit: Annotated[float, msgspec.Meta(ge=0)] | None = None
    shouting_min_letters: PositiveInt | None = None
    shouting_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    repetition_similarity: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    repetition_min_words: PositiveInt | None = None
    repeated_failure_limit: PositiveInt | None = None


class HandoffSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Human handoff: agents' hours, queue pace, waiting limit, the escalation policy (``SUPPORT_HANDOFF__*``)."""

    timezone: str = "UTC"
    # Working days, 0 = Monday.
    days: list[Annotated[int, msgspec.Meta(ge=0, le=6)]] = msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4])
    opens: Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}$")] = "09:00"
    closes: Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}$")] = "17:00"
    # Expected wait per conversation ahead in the queue (what customers are told).
    minutes_per_conversation: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # No agent within this much of agents' working time (closed hours do not count) → back to the assistant.
    max_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    # A TOML file with an [escalation] policy (see EscalationPolicyFile); the built-in policy when unset.
    policy_file: str | None = None

    def policy(self) -> EscalationPolicyFile:
        """The policy file's contents (all defaults when no file is configured).

        Raises:
            SettingsError: the file cannot be read or does not fit.
        """
        if not self.policy_file:
            return EscalationPolicyFile()
        path = Path(self.policy_file).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            return msgspec.convert(data.get("escalation", data), EscalationPolicyFile)
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
            msg = f"SUPPORT_HANDOFF__POLICY_FILE ({path}): {error}"
            raise SettingsError(msg) from error


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Outgoing webhooks and their delivery worker (``SUPPORT_WEBHOOKS__*``); see docs/webhooks.md."""

    # Per delivery attempt, connection to last byte; an attempt without a 2xx answer in time is retried.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Attempts per event and endpoint before the delivery is marked failed.
    max_attempts: PositiveInt = 20
    # The wait after attempt n is backoff_base_s * 2**(n-1), at most backoff_cap_s, with jitter (its upper half).
    backoff_base_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    backoff_cap_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # How often the worker looks for due deliveries when it found none last time.
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Deliveries claimed and sent (concurrently) per round, and of those at most per_endpoint to one endpoint: the
    # backlog of a slow or dead receiver cannot fill a round while other endpoints wait.
    batch_size: PositiveInt = 50
    per_endpoint: PositiveInt = 10
    # Rounds in flight at once: a new round starts every poll interval (or at once after a full one) while earlier
    # rounds still wait for slow receivers, up to this many.
    rounds: PositiveInt = 4
    # Delivered and failed deliveries are deleted this many days after their last attempt (and their events once
    # no delivery needs them); pending ones never are. 0 keeps them forever.
    retention_days: Annotated[int, msgspec.Meta(ge=0)] = 30
    # Whether endpoints may be loopback, private, link-local or otherwise non-public addresses (or names that
    # resolve to them). Unset: allowed in dev and test (a local receiver), refused in prod (SSRF); see
    # Settings.private_webhook_targets_allowed.
    allow_private_targets: bool | None = None

    def __post_init__(self) -> None:
        if self.backoff_cap_s < self.backoff_base_s:
            msg = "backoff_cap_s must not be smaller than backoff_base_s"
            raise ValueError(msg)


class MemoryExpirySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Days a remembered fact of each kind stays recallable after it was last stated; 0 = never expires."""

    name: Annotated[int, msgspec.Meta(ge=0)] = 730
    email: Annotated[int, msgspec.Meta(ge=0)] = 730
    phone: Annotated[int, msgspec.Meta(ge=0)] = 730
    order_number: Annotated[int, msgspec.Meta(ge=0)] = 90
    ticket_number: Annotated[int, msgspec.Meta(ge=0)] = 60
    plan: Annotated[int, msgspec.Meta(ge=0)] = 365
    product: Annotated[int, msgspec.Meta(ge=0)] = 365
    language: Annotated[int, msgspec.Meta(ge=0)] = 730
    preference: Annotated[int, msgspec.Meta(ge=0)] = 365
    note: Annotated[int, msgspec.Meta(ge=0)] = 180


class MemorySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Customer memory (``SUPPORT_MEMORY__*``); see docs/memory.md."""

    enabled: bool = True
    # Tokens of recalled facts given to the assistant per turn (four characters a token, estimated).
    recall_token_budget: PositiveInt = 120
    # Current facts read per recall before ranking.
    recall_candidates: PositiveInt = 50
    # Longest rolling summary of a conversation's older turns.
    summary_max_chars: PositiveInt = 1500
    # Offer Claude the remember_fact tool.
    model_tool: bool = True
    expiry_days: MemoryExpirySettings = msgspec.field(default_factory=MemoryExpirySettings)


class LimitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rate limits and the daily token budget (``SUPPORT_LIMITS__*``); see docs/limits.md.

    Each rate is requests per window (seconds), all of them usable at once; a rate of 0 switches that limit off.
    """

    # False switches every rate limit and the token budget off.
    enabled: bool = True
    # Per API key (admin, agent, service), on every authenticated endpoint.
    per_key: NonNegativeInt = 600
    per_key_window_s: PositiveInt = 60
    # Per customer, on every request made with a customer token.
    per_customer: NonNegativeInt = 60
    per_customer_window_s: PositiveInt = 60
    # Per client address (IPv6: per /64), on every request made with a customer token.
    per_ip: NonNegativeInt = 120
    per_ip_window_s: PositiveInt = 60
    # Customer messages per conversation, whoever sends them (JSON, SSE and WebSocket sends).
    per_conversation: NonNegativeInt = 10
    per_conversation_window_s: PositiveInt = 60
    # Model tokens (input, output and cached) per customer and UTC day; 0 = unlimited.
    daily_tokens_per_customer: NonNegativeInt = 200_000
    # Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed; none by default.
    trusted_proxies: tuple[str, ...] = ()


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service can be configured with; see docs/configuration.md."""

    env: Environment = "dev"
    host: str = "127.0.0.1"
    port: Port = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON logs (structlog) when true; readable console logs otherwise. Defaults to true in prod.
    log_json: bool | None = None
    # Where `make run` and the embedded servers keep their data.
    data_dir: str = ".data"
    # When unset, an embedded server is started under data_dir (development, tests, CI).
    database_url: str | None = None
    valkey_url: str | None = None
    bootstrap_admin_key: str | None = None
    db: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    valkey: ValkeySettings = msgspec.field(default_factory=ValkeySettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    embedding: EmbeddingSettings = msgspec.field(default_factory=EmbeddingSettings)
    knowledge: KnowledgeSettings = msgspec.field(default_factory=KnowledgeSettings)
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    conversations: ConversationSettings = msgspec.field(default_factory=ConversationSettings)
    memory: MemorySettings = msgspec.field(default_factory=MemorySettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    handoff: HandoffSettings = msgspec.field(default_factory=HandoffSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)

    @property
    def json_logs(self) -> bool:
        """Whether logs are rendered as JSON lines."""
        return self.env == "prod" if self.log_json is None else self.log_json

    @property
    def private_webhook_targets_allowed(self) -> bool:
        """Whether webhooks may target non-public addresses; by default only outside prod."""
        allowed = self.webhooks.allow_private_targets
        return self.env != "prod" if allowed is None else allowed

    @property
    def data_path(self) -> Path:
        """The data folder as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    def require_database_url(self) -> str:
        """The database URL, which must be known once the process has started its servers."""
        if not self.database_url:
            msg = "SUPPORT_DATABASE_URL is not set and no embedded server was started"
            raise SettingsError(msg)
        return self.database_url

    def require_valkey_url(self) -> str:
        """The Valkey URL, which must be known once the process has started its servers."""
        if not self.valkey_url:
            msg = "SUPPORT_VALKEY_URL is not set and no embedded server was started"
            raise SettingsError(msg)
        return self.valkey_url


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``SUPPORT_*`` variables (``os.environ`` by default) plus explicit overrides.

    Raises:
        SettingsError: a variable is unknown or has a bad value; the message names it.
    """
    source = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for name, value in source.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(("SUPPORT_TEST_", "SUPPORT_BENCH_")):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(NESTING)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{name}: {part} is not a group of settings")
            node = child
        node[path[-1]] = value
    _coerce_sequences(raw, Settings, ())
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(_name_the_variable(str(error))) from None
    _check_urls(settings)
    return settings


# What the drivers accept: asyncpg (plain postgresql:// is given the driver) and the Valkey/Redis clients. Anything
# else failed later with a driver's traceback, after embedded servers had started (found by an exploratory test).
_DATABASE_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")
_VALKEY_SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")


def _check_urls(settings: Settings) -> None:
    if settings.database_url and not settings.database_url.startswith(_DATABASE_SCHEMES):
        msg = "SUPPORT_DATABASE_URL: expected a PostgreSQL URL (postgresql://user:password@host:5432/database)"
        raise SettingsError(msg)
    if settings.valkey_url and not settings.valkey_url.startswith(_VALKEY_SCHEMES):
        msg = "SUPPORT_VALKEY_URL: expected a Valkey URL (redis://host:6379/0, rediss://, valkey:// or unix://)"
        raise SettingsError(msg)
    if settings.embedding.provider == "http" and not settings.embedding.url:
        msg = "SUPPORT_EMBEDDING__URL: required when SUPPORT_EMBEDDING__PROVIDER=http"
        raise SettingsError(msg)


def _coerce_sequences(raw: dict[str, Any], struct: type[msgspec.Struct], path: tuple[str, ...]) -> None:
    """Turn comma-separated strings into lists where the field is a sequence (``a,b`` or a JSON array)."""
    hints = typing.get_type_hints(struct, include_extras=True)
    for key, value in list(raw.items()):
        hint = hints.get(key)
        if hint is None:
            continue
        target = _unwrap(hint)
        if isinstance(value, dict) and isinstance(target, type) and issubclass(target, msgspec.Struct):
            _coerce_sequences(value, target, (*path, key))
        elif isinstance(value, str) and typing.get_origin(target) in {tuple, list}:
            text = value.strip()
            if text.startswith("["):
                try:
                    raw[key] = msgspec.json.decode(text)
                except msgspec.DecodeError:
                    variable = ENV_PREFIX + NESTING.join((*path, key)).upper()
                    msg = f'{variable}: not a JSON array; write a,b or ["a", "b"]'
                    raise SettingsError(msg) from None
            else:
                raw[key] = [item.strip() for item in text.split(",") if item.strip()]


def _unwrap(hint: Any) -> Any:
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return hint


def _name_the_variable(message: str) -> str:
    """Rewrite msgspec's ``... - at `$.llm.model``` into ``SUPPORT_LLM__MODEL: ...``."""
    text, _, location = message.partition(" - at `$")
    location = location.rstrip("`")
    unknown_prefix = "Object contains unknown field `"
    if text.startswith(unknown_prefix):
        field = text[len(unknown_prefix) :].rstrip("`")
        return f"{_env_name(location, field)}: unknown setting"
    return f"{_env_name(location, None)}: {text}"


def _env_name(location: str, leaf: str | None) -> str:
    parts = [part for part in location.split(".") if part]
    if leaf is not None:
        parts.append(leaf)
    return ENV_PREFIX + NESTING.join(part.upper() for part in parts)
