"""Platform settings, shared by every service and the CLI.

Sources, strongest first: keyword arguments, ``DRIFTLOOP_*`` environment variables (nested keys with ``__``,
e.g. ``DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS``), the TOML file named by ``DRIFTLOOP_CONFIG`` (default
``driftloop.toml`` in the working directory, if present), then the embedded defaults.

The embedded defaults need nothing installed: SQLite under ``home``, a local folder as object store, the Tansu
broker and our schema registry started by ``driftloop up``. Pointing at Apache Kafka, a Confluent registry,
PostgreSQL or S3/MinIO is only a matter of these settings.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from driftloop.errors import ConfigError

ENV_PREFIX = "DRIFTLOOP_"
CONFIG_ENV = "DRIFTLOOP_CONFIG"
DEFAULT_CONFIG_FILE = "driftloop.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Start the embedded Tansu broker with `driftloop up`. Set false to use an external Kafka.
    embedded: bool = True
    # Tansu makes every group join wait session.timeout.ms/2: keep it short (see docs).
    session_timeout_ms: int = Field(default=6000, ge=1000)
    # How long the broker may hold a consumer's fetch that finds nothing (librdkafka fetch.wait.max.ms). Apache
    # Kafka answers a waiting fetch as soon as records come, so a long wait costs nothing there and spares the idle
    # broker. The embedded Tansu re-checks a waiting fetch on a timer instead: measured, a record arrived up to
    # ~0.5 s after it was produced at 2000 ms (up to ~2 s at 5000, ~0.05 s at 100) -- but each consumer's
    # empty fetches cost the broker CPU at rest, more the shorter this is.
    fetch_wait_max_ms: int = Field(default=2000, ge=10, le=30000)
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # How long a publish that waits for the broker's acknowledgement waits; past it, the event is not published
    # (the caller is told) and the producer is replaced (e.g. it is stuck on a broker that came back empty).
    publish_timeout_seconds: float = Field(default=30.0, gt=0)
    # How long the broker may hold an empty fetch of a consumer whose events start the next step of the training
    # cascade (features, triggers, training, registry, serving's promotions): the embedded broker answers a held
    # fetch when it next looks, about a fifth of this on average. Other consumers hold 2000 ms (idle CPU).
    prompt_fetch_wait_ms: int = Field(default=500, ge=10, le=2000)
    # How long the broker may hold an empty fetch of a process's pipeline follower (every process of every service
    # has one; a change of ``driftloop pipeline apply`` reaches them through it). Pipelines change rarely: on the
    # embedded broker a change is taken ~2 s later on average at 10000 (max ~3.5 s), and the idle followers cost it
    # a fifth of what they did at 2000; on Apache Kafka at once either way.
    follower_fetch_wait_ms: int = Field(default=10000, ge=10, le=30000)
    # A process whose consumers have taken nothing and which has published nothing for this long rests: its event
    # consumers pause their partitions (no held fetches: on the embedded broker each costs it CPU for every topic,
    # several times a second) and look once every ``rest_look_seconds``. A process that publishes after a quiet
    # spell rings the bus's doorbell (``driftloop.bus.doorbell``), which every process's pipeline follower hears:
    # the stack is prompt again within a follower's wait (~2 s on the embedded broker), long before a cut that
    # starts a cascade is done. None: 60 s on the embedded broker, 0 (never rest) on Apache Kafka, whose held
    # fetches cost nothing.
    rest_after_seconds: float | None = Field(default=None, ge=0)
    rest_look_seconds: float = Field(default=10.0, gt=0)
    # Consumer group of the ingestion processes: processes in one group split the stream topics' partitions.
    ingestion_group: str = Field(default="driftloop-ingestion", min_length=1)
    # Extra librdkafka properties (security.protocol, sasl.*, ...) passed to every client.
    client_config: dict[str, str] = Field(default_factory=dict)
    # Days a consumer group's processed-event ids (redelivery dedupe) are kept; 0 = for ever.
    processed_events_retention_days: float = Field(default=30.0, ge=0)
    # Authentication of every client (bus, consumers, faust workers, ingestion intake, CLI). PLAINTEXT: none.
    # SASL_PLAINTEXT/SASL_SSL with ``sasl_mechanism`` SCRAM-SHA-256/512 (or PLAIN) and the user below.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    # CA bundle (PEM) that signed the brokers' certificates, for SSL/SASL_SSL; empty: the system's.
    ssl_ca_location: str = ""
    # Topics created by driftloop (`driftloop up`, services at start): event topics keep their events this many
    # hours (retention.ms; 0 = for ever); stream topics (records) ``stream_retention_hours``. Topics in
    # ``compacted_topics`` hold state (the last alias move, the last applied pipeline per model) and are compacted
    # by key instead. Nothing a service needs after a restart lives only on the bus: each reconciles from the
    # database, the owning API or (pipelines) ``pipelines_dir``.
    event_retention_hours: float = Field(default=168.0, ge=0)
    stream_retention_hours: float = Field(default=168.0, ge=0)
    compacted_topics: list[str] = Field(
        default_factory=lambda: ["driftloop.models.promoted", "driftloop.pipelines.applied"]
    )
    # Where the embedded Tansu broker keeps topics: "memory" (gone when the broker stops: the default, and what
    # the tests use) or "s3rver" (durable: an s3rver S3 endpoint, `npm install -g s3rver@3.7.1`, started by
    # `driftloop up` with its data under <home>/broker).
    embedded_storage: Literal["memory", "s3rver"] = "memory"
    # The s3rver command (if not on the PATH) and the port it listens on (127.0.0.1).
    s3rver_command: str = "s3rver"
    s3rver_port: int = Field(default=9400, ge=1, le=65535)

    @field_validator("sasl_username")
    @classmethod
    def _no_blank_user(cls, value: str) -> str:
        return value.strip()

    @property
    def consumers_rest_after(self) -> float:
        """``rest_after_seconds`` as it applies: 0 means consumers never rest."""
        if self.rest_after_seconds is None:
            return 60.0 if self.embedded else 0.0
        return self.rest_after_seconds


class SchemaRegistrySettings(_Section):
    url: str = "http://127.0.0.1:8081"
    # Start driftloop's own registry with `driftloop up`. Set false to use a Confluent registry at `url`.
    embedded: bool = True
    default_compatibility: Literal[
        "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"
    ] = "BACKWARD"


class DatabaseSettings(_Section):
    # SQLAlchemy URL. Empty: SQLite file `<home>/driftloop.db`.
    # PostgreSQL: postgresql+psycopg://user:password@host:5432/driftloop
    url: str = ""
    # Retention purges (serving predictions, monitor observations, processed events): how often each owning
    # service runs its purge, and rows deleted per transaction (short transactions: the database is not locked long).
    purge_interval_seconds: float = Field(default=3600.0, gt=0)
    purge_batch_rows: int = Field(default=5000, ge=1)


class ServingSettings(_Section):
    # Serving asks the registry (over HTTP, with its token) which version is each model's champion: at start,
    # every this many seconds (a bus that lost events is caught up), and before loading any promoted version (a
    # ModelPromoted the registry did not make is refused). Off: serving trusts the bus alone (tests only).
    verify_with_registry: bool = True
    reconcile_interval_seconds: float = Field(default=15.0, gt=0)
    # Days a served prediction row (and feedback joined to it) is kept; 0 = for ever.
    prediction_retention_days: float = Field(default=30.0, ge=0)
    # Feedback may still come this many days after a prediction: a prediction without feedback is kept at least
    # this long (also the monitor's unjoined observations and feedback waiting for its prediction).
    feedback_horizon_days: float = Field(default=30.0, ge=0)
    # Worker processes answering on the one serving port (each a full replica: it follows promotions from the
    # bus and logs its own predictions). Unset: half the machine's cores, at least 1 and at most 4 (the other
    # half is left to the model's own threads and the rest of the stack).
    workers: int | None = Field(default=None, ge=1, le=64)

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, min(4, (os.cpu_count() or 1) // 2))


class ObjectStoreSettings(_Section):
    # "local": a folder (default `<home>/objects`); "s3": any S3 endpoint (MinIO, AWS) through the minio SDK.
    type: Literal["local", "s3"] = "local"
    path: Path | None = None
    endpoint: str = ""  # host:port, e.g. 127.0.0.1:9000
    bucket: str = "driftloop"
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    region: str = "us-east-1"
    secure: bool = False


class SparkSettings(_Section):
    master: str = "local[*]"
    shuffle_partitions: int = Field(default=4, ge=1)
    driver_memory: str = "1g"
    # Start Spark with the services that use it (ingestion cuts dataset versions, features materializes them), so
    # the first cut and materialization do not wait for a JVM to start; false: on first use.
    warm_at_start: bool = True


class RedisOnlineStoreSettings(_Section):
    # A full URL (redis://[:password@]host:port/db, rediss:// for TLS) wins over host/port/db/password.
    url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    password: SecretStr = SecretStr("")
    # Every key is <key_prefix><stream>:<entity>; a prefix lets deployments share one Redis.
    key_prefix: str = "driftloop:online:"
    # Entities not written for this long expire (Redis EXPIRE, renewed on each write). None: kept forever.
    ttl_seconds: int | None = Field(default=None, ge=1)
    # Connect/read timeout: a Redis that stops answering fails a lookup in this time (a 503), not never.
    timeout_seconds: float = Field(default=5.0, gt=0)


class FeaturesSettings(_Section):
    # The online store's type: "database" (the ``online_features`` table) or "redis" (configured by ``redis``
    # below). Types are registered in ``services/features/onlinestore.py``: ``ONLINE_STORE_TYPES``.
    online_store: str = Field(default="database", min_length=1)
    redis: RedisOnlineStoreSettings = RedisOnlineStoreSettings()
    # Run the streaming-feature worker (faust) in the features service: online values within seconds of a record.
    streaming: bool = True
    # HTTP processes serving online lookups behind the service's one port; empty: one per core (at most 4).
    workers: int | None = Field(default=None, ge=1)


class MonitorSettings(_Section):
    # Days a monitor observation (and joined feedback) is kept; 0 = for ever. Rows of open windows, the baseline
    # window and not yet joined rows within serving.feedback_horizon_days are kept regardless.
    observation_retention_days: float = Field(default=30.0, ge=0)


class RaySettings(_Section):
    # Empty: a local Ray started by the training service. Else a cluster address (also read from RAY_ADDRESS).
    address: str = ""
    num_cpus: int | None = Field(default=None, ge=1)
    # Idle worker processes a local Ray keeps (its num_workers_soft_limit; Ray's default keeps one per CPU). One
    # keeps the next fit warm (a cold worker costs ~1.5 s more); each idle worker checks for signals every 10 ms,
    # about 0.75% of a core at rest.
    idle_workers: int = Field(default=1, ge=0)
    # Copy the output of a local Ray's workers (the fits) into the training service's log. Off: it stays in Ray's
    # session logs (<ray temp dir>/session_latest/logs/worker-*), and Ray's log monitor, which looks for new lines
    # ten times a second (about 0.6% of a core at rest), is not kept running.
    forward_worker_logs: bool = False
    # Training starts Ray's workers with what a fit imports (the pipelines' model libraries, metrics, plots), so
    # that the first fit does not import them; false: on first use.
    warm_workers: bool = True
    # A local Ray (never a joined cluster) is shut down after this many seconds with no run and no sign of work (a
    # stream's cut starting, a training request), and started again on the next one: awake, it costs about 3% of a
    # core (raylet, GCS, agents, an idle worker); a start costs a few seconds of CPU. 0: Ray starts with the
    # training service and stays up.
    idle_shutdown_seconds: float = Field(default=120.0, ge=0)
    # A local Ray's processes (GCS, raylet, the workers that fit) run this much nicer than the training service, and
    # the service's session (when it leads one: the launcher starts each service so) this much nicer than the other
    # services': training is batch work, and on a shared machine it yields the CPU to serving, ingestion's cuts and
    # feature materialization (a Ray starting beside a stream's first cut made the cut take 11 s instead of 5).
    # Between sessions only the session's value counts (Linux autogroup scheduling). 0: the same.
    niceness: int = Field(default=10, ge=0, le=19)
    # A plain fit (no search) of at most this many rows that finds the local Ray asleep or still starting runs in
    # the training service's own process instead of waiting for it (a start costs 5-20 s on a 2-core machine, a
    # 10k-row fit well under one); Ray goes on starting for the runs after it. 0: every fit waits for Ray.
    local_fit_max_rows: int = Field(default=100_000, ge=0)


class ServicesSettings(_Section):
    host: str = "127.0.0.1"
    schemaregistry_port: int = 8081
    ingestion_port: int = 8101
    features_port: int = 8102
    training_port: int = 8103
    registry_port: int = 8104
    serving_port: int = 8105
    monitor_port: int = 8106
    triggers_port: int = 8107
    dashboard_port: int = 8108
    # HTTP limits of every service (runtime.service): a request body over max_body_bytes is refused (413) as it
    # streams in, unless its route declares a larger cap (ingestion's record batches); a connection that has not
    # sent its request headers within header_timeout_seconds (or stays idle that long between requests) is closed;
    # over max_concurrency connections or requests in flight a service answers 503.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    max_concurrency: int = Field(default=200, ge=1)
    # The HTTP/1.1 parser: httptools (C, the default) or h11 (pure Python; max_header_bytes applies to it only,
    # httptools has its own fixed limit on a request head).
    http_parser: Literal["httptools", "h11"] = "httptools"

    def port(self, service: str) -> int:
        try:
            return int(getattr(self, f"{service}_port"))
        except AttributeError:
            raise ConfigError(f"no port setting for service {service!r}") from None

    def url(self, service: str) -> str:
        return f"http://{self.host}:{self.port(service)}"


class PrometheusSettings(_Section):
    # Start a Prometheus server (the `prometheus` binary) with `driftloop up`, scraping every service it starts;
    # `driftloop up --prometheus/--no-prometheus` overrides. Config and data in `<home>/prometheus`.
    enabled: bool = False
    port: int = Field(default=9090, ge=1, le=65535)


class SupervisorSettings(_Section):
    """``driftloop up`` leaves a supervisor running that restarts a component that exits, with a growing pause
    (``backoff_seconds`` doubling up to ``max_backoff_seconds``). A component that exits more than
    ``max_restarts`` times within ``window_seconds`` is reported as crashing and left stopped."""

    enabled: bool = True
    check_interval_seconds: float = Field(default=1.0, gt=0)
    backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    max_restarts: int = Field(default=5, ge=0)
    window_seconds: float = Field(default=300.0, gt=0)


MIN_TOKEN_LENGTH = 12


class SecuritySettings(_Section):
    """API tokens (bearer). Enforced when ``enabled`` and at least one admin token is known: from
    ``admin_tokens`` or the file ``<home>/admin.token`` that ``driftloop up`` writes (mode 600) when none is
    configured. Without any token the APIs stay open (tests, local experiments) and services log a warning."""

    enabled: bool = True
    # name -> token. The name is who made a change (kept with alias moves and rollbacks).
    admin_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # name -> token; read scope: reads (GET), and the lookups that only read (online features, the schema
    # registry's lookup and compatibility check); a 403 on any other mutating call.
    read_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # name -> token; producer scope: what a read token may, plus posting records and registering schemas.
    producer_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # name -> token; serving-client scope: what a read token may, plus predict, infer and feedback.
    serving_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # Optional: token name -> the streams a producer token may write (records; schemas under the subjects of the
    # streams' topics), and -> the models a serving token may call. A token not listed is not restricted.
    token_streams: dict[str, list[str]] = Field(default_factory=dict)
    token_models: dict[str, list[str]] = Field(default_factory=dict)
    # Reads (GET/HEAD) need a read or admin token too. /healthz and /metrics stay open.
    protect_reads: bool = False
    # "METHOD /path" of mutating routes open without a token (the data plane). Path parameters match any name.
    # Empty: the data plane needs a token too (a serving token for predict/infer/feedback, a producer token for
    # records), which security.token_models / token_streams may restrict.
    public_routes: list[str] = Field(
        default_factory=lambda: [
            "POST /v1/models/{name}/predict",
            "POST /v1/models/{name}/feedback",
            "POST /v2/models/{name}/infer",
            "POST /v2/models/{name}/versions/{version}/infer",
            "POST /v1/streams/{stream}/records",
        ]
    )

    @field_validator("admin_tokens", "read_tokens", "producer_tokens", "serving_tokens")
    @classmethod
    def _tokens_are_long_enough(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # An empty or short token is a typo or a guessable secret, never what the operator meant.
        for name, token in tokens.items():
            if len(token.get_secret_value().strip()) < MIN_TOKEN_LENGTH:
                raise ValueError(f"token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        return tokens

    @model_validator(mode="after")
    def _restrictions_name_tokens(self) -> SecuritySettings:
        for key, tokens in (("token_streams", self.producer_tokens), ("token_models", self.serving_tokens)):
            unknown = sorted(set(getattr(self, key)) - set(tokens))
            if unknown:
                kind = "producer_tokens" if key == "token_streams" else "serving_tokens"
                raise ValueError(f"{key}: {unknown} are not names of {kind}")
        return self

    @field_validator("public_routes")
    @classmethod
    def _routes_are_method_and_path(cls, routes: list[str]) -> list[str]:
        for route in routes:
            method, _, path = route.strip().partition(" ")
            if method not in {"POST", "PUT", "PATCH", "DELETE"} or not path.startswith("/"):
                raise ValueError(f"{route!r} is not 'METHOD /path' with METHOD one of POST, PUT, PATCH, DELETE")
        return routes


class Settings(BaseSettings):
    """All settings of a driftloop deployment. Unknown keys are rejected, naming the key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    # Where the embedded stack keeps its database, objects, logs and PIDs.
    home: Path = Path(".driftloop")
    # Folder of pipeline config files (*.yaml), one per stream/model.
    pipelines_dir: Path = Path("pipelines")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    database: DatabaseSettings = DatabaseSettings()
    object_store: ObjectStoreSettings = ObjectStoreSettings()
    spark: SparkSettings = SparkSettings()
    ray: RaySettings = RaySettings()
    monitor: MonitorSettings = MonitorSettings()
    serving: ServingSettings = ServingSettings()
    features: FeaturesSettings = FeaturesSettings()
    services: ServicesSettings = ServicesSettings()
    security: SecuritySettings = SecuritySettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    supervisor: SupervisorSettings = SupervisorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        elif CONFIG_ENV in os.environ:
            raise ConfigError(f"{CONFIG_ENV}={config_file} does not exist: point it at a TOML settings file")
        return tuple(sources)

    @cached_property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.home / 'driftloop.db').resolve()}"

    @cached_property
    def object_store_path(self) -> Path:
        return (self.object_store.path or self.home / "objects").resolve()

    @property
    def log_dir(self) -> Path:
        return (self.home / "logs").resolve()

    @property
    def ray_address(self) -> str:
        return self.ray.address or os.environ.get("RAY_ADDRESS", "")

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka properties for a client of this deployment (with its authentication settings)."""
        return {
            "bootstrap.servers": self.kafka.bootstrap_servers,
            # No client telemetry (KIP-714): nothing here reads it, and an idle client asked the broker for a
            # telemetry subscription every few seconds (a tenth of the idle stack's requests to the embedded broker).
            "enable.metrics.push": False,
            **self.kafka_security_config(),
            **self.kafka.client_config,
            **extra,
        }

    def kafka_security_config(self) -> dict[str, str]:
        """The librdkafka properties of ``kafka.security_protocol`` and its SASL/SSL settings ({} for PLAINTEXT)."""
        kafka = self.kafka
        if kafka.security_protocol == "PLAINTEXT":
            return {}
        config: dict[str, str] = {"security.protocol": kafka.security_protocol}
        if kafka.security_protocol.startswith("SASL_"):
            if not kafka.sasl_username:
                raise ConfigError(
                    f"kafka.security_protocol={kafka.security_protocol} needs kafka.sasl_username and "
                    "kafka.sasl_password (DRIFTLOOP_KAFKA__SASL_USERNAME / DRIFTLOOP_KAFKA__SASL_PASSWORD)"
                )
            config.update(
                {
                    "sasl.mechanism": kafka.sasl_mechanism,
                    "sasl.username": kafka.sasl_username,
                    "sasl.password": kafka.sasl_password.get_secret_value(),
                }
            )
        if kafka.ssl_ca_location and kafka.security_protocol.endswith("SSL"):
            config["ssl.ca.location"] = kafka.ssl_ca_location
        return config


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    """DRIFTLOOP_* variables that name no setting (pydantic-settings would silently ignore them)."""
    known_top = {name.upper() for name in Settings.model_fields}
    sections = {
        name.upper(): field.annotation
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    unknown = []
    for key in environ:
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        rest = key[len(ENV_PREFIX) :]
        top, _, sub = rest.partition("__")
        if top not in known_top:
            unknown.append(key)
        elif sub and top in sections:
            section_fields = {n.upper() for n in sections[top].model_fields}
            if sub.partition("__")[0] not in section_fields:
                unknown.append(key)
    return unknown


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment and the config file, with a readable error on a bad key."""
    unknown = _unknown_env_keys(dict(os.environ))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in the environment: {', '.join(sorted(unknown))}. "
            "Nested keys use a double underscore, e.g. DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS; "
            "see the README's settings reference."
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {key!r}")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The DRIFTLOOP_* variables that reproduce `settings` in a child process."""
    env: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(f"{prefix}__{name.upper()}" if prefix else name.upper(), getattr(value, name))
        elif isinstance(value, dict | list):
            import json

            def plain(item: Any) -> Any:
                return item.get_secret_value() if isinstance(item, SecretStr) else item

            items = {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else [plain(v) for v in value]
            env[ENV_PREFIX + prefix] = json.dumps(items)
        elif isinstance(value, SecretStr):
            env[ENV_PREFIX + prefix] = value.get_secret_value()
        elif value is None:
            return
        elif isinstance(value, bool):
            env[ENV_PREFIX + prefix] = "true" if value else "false"
        elif isinstance(value, Path):
            env[ENV_PREFIX + prefix] = str(value.resolve())
        else:
            env[ENV_PREFIX + prefix] = str(value)

    walk("", settings)
    return env
