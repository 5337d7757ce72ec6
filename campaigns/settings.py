"""One typed settings object, read from the environment (prefix ``CAMPAIGNS_``, nested with ``__``).

Example: ``CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092``, ``CAMPAIGNS_DATABASE__PORT=15432``.
Nothing is read at import: call :func:`load_settings` where the process starts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaigns.core.retry import DEFAULT_TIER_DELAYS_S
from campaigns.logs import LibrdkafkaLog

CHANNELS = ("whatsapp", "sms", "email")


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    topic_prefix: str = ""  # tests set a unique prefix so runs never share topics
    partitions: int = 6
    replication_factor: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    client_id: str = "campaigns"
    # Consumer groups: a consumer that sends no heartbeat for this long (a killed or frozen worker) is
    # evicted and its partitions move to the others. Lower recovers faster after a crash; too low evicts
    # workers on a network blip. The broker bounds it (group.min/max.session.timeout.ms: 6 s .. 30 min).
    session_timeout_ms: int = Field(default=45_000, ge=1_000, le=3_600_000)
    # Longest time between two polls of a consumer before it leaves the group (a stuck batch). Must be
    # >= session_timeout_ms (librdkafka refuses less).
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000, le=86_400_000)

    @model_validator(mode="after")
    def _poll_interval_covers_session(self) -> KafkaSettings:
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError(
                f"max_poll_interval_ms ({self.max_poll_interval_ms}) must be >= session_timeout_ms "
                f"({self.session_timeout_ms}): raise CAMPAIGNS_KAFKA__MAX_POLL_INTERVAL_MS or lower "
                "CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS"
            )
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def as_librdkafka(self, **overrides: Any) -> dict[str, Any]:
        """The dotted librdkafka configuration for confluent-kafka clients (Producer, Consumer, AdminClient).

        * Every client logs through the project's logging (``logger``: :class:`~campaigns.logs.LibrdkafkaLog`,
          logger ``campaigns.librdkafka``), so librdkafka never prints raw ``%N|...`` lines to stderr.
        * A consumer config (one with a ``group.id``) gets ``session.timeout.ms``, ``max.poll.interval.ms``
          (from :attr:`session_timeout_ms`, :attr:`max_poll_interval_ms`) and a heartbeat of at most a
          third of the session timeout; producers and admin clients do not (librdkafka warns about
          consumer properties on them).
        * ``overrides`` win over all of it.
        """
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "logger": LibrdkafkaLog(),
        }
        if "group.id" in overrides:
            conf["session.timeout.ms"] = self.session_timeout_ms
            conf["max.poll.interval.ms"] = self.max_poll_interval_ms
            # librdkafka's default heartbeat (3 s) would outlast a short session timeout.
            conf["heartbeat.interval.ms"] = max(100, min(3_000, self.session_timeout_ms // 3))
        conf.update(overrides)
        return conf

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{hostport}" for hostport in self.bootstrap_servers.split(","))


class DatabaseSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "campaigns"
    password: SecretStr = SecretStr("campaigns")
    name: str = "campaigns"
    pool_size: int = 10

    def url(self, *, hide_password: bool = False) -> str:
        password = "***" if hide_password else self.password.get_secret_value()
        return f"postgresql+psycopg2://{self.user}:{password}@{self.host}:{self.port}/{self.name}"

    def dsn(self) -> str:
        """libpq DSN for raw psycopg2 connections (COPY, execute_values on the hot path)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password.get_secret_value()} dbname={self.name}"
        )


class ProviderSettings(BaseModel):
    """Where the channel transports send. Defaults point at the local provider simulator."""

    whatsapp_base_url: str = "http://127.0.0.1:18080/whatsapp"
    whatsapp_api_version: str = "v21.0"  # Graph API version segment of the WhatsApp Cloud API URL
    whatsapp_phone_number_id: str = "100000000000001"
    whatsapp_token: SecretStr = SecretStr("dev-whatsapp-token")
    sms_base_url: str = "http://127.0.0.1:18080/sms"
    sms_account_sid: str = "AC00000000000000000000000000000000"
    sms_auth_token: SecretStr = SecretStr("dev-sms-token")
    sms_from: str = "+15550000000"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 18025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "campaigns@example.com"
    smtp_use_tls: bool = False  # implicit TLS (port 465); mutually exclusive with smtp_starttls
    smtp_validate_certs: bool = True
    smtp_cert_bundle: str | None = None  # CA bundle (PEM path) to trust, e.g. a private relay's CA
    smtp_pool_size: int = 8  # reusable SMTP connections per transport (one message at a time each)
    timeout_s: float = 10.0
    max_connections: int = 100
    # HTTP client library for the WhatsApp/SMS transports; "aiohttp" measured far cheaper per request.
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"


class SenderSettings(BaseModel):
    batch_size: int = 500
    poll_timeout_s: float = 0.2
    max_in_flight: int = 200  # concurrent provider calls per channel per worker
    claim_lease_s: float = 60.0  # a claim older than this whose send never recorded may be retried
    # Retry tier n holds a record retry_tier_delays_s[n-1] seconds (campaign.messages.<channel>.retry.<n>);
    # a retry waits in the largest tier not longer than its remaining wait (campaigns.core.retry).
    retry_tier_delays_s: tuple[float, ...] = DEFAULT_TIER_DELAYS_S

    @property
    def retry_tiers(self) -> int:
        return len(self.retry_tier_delays_s)


class AnalyticsSettings(BaseModel):
    window_s: int = 60
    flush_interval_s: float = 1.0
    failure_min_sample: int = 20


class LiveSettings(BaseModel):
    """The Faust live view (``streams/live.py``): windowed per-campaign tables fed by ``campaign.outcome_counts``."""

    web_host: str = "127.0.0.1"  # bind address and the host in the worker's canonical URL; loopback by default
    web_port: int = 6066
    store: str = "memory://"  # tables are rebuilt from their changelog topics at start; no RocksDB needed
    datadir: str | None = None  # Faust's data directory; None = <system temp>/campaigns-live/<app id>
    windows_kept: int = 10  # windows kept per campaign: table expiry and changelog retention = window_s * this
    batch_size: int = 1000  # OutcomeCounts records per agent micro-batch (at most)
    batch_within_s: float = 0.5  # a micro-batch is applied after at most this long
    session_timeout_s: float = 10.0  # a crashed worker's partitions move after this long (Faust's default: 60)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    sender: SenderSettings = Field(default_factory=SenderSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    metrics_enabled: bool = True  # the worker's Prometheus metrics and /metrics endpoint
    metrics_host: str = "127.0.0.1"  # loopback by default: expose it on purpose, never by accident
    metrics_port: int = 9108  # 0 picks a free port (tests); PipelineMetrics.port tells which
    scheduler_interval_s: float = 0.2
    log_level: str = "info"


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return Settings()
