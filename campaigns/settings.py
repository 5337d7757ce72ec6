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
    # Security, passed through to every client (librdkafka names in comments). PLAINTEXT is the local broker;
    # production: SASL_SSL with SCRAM and the broker's CA (docs/security.md).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"  # security.protocol
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None  # sasl.mechanism
    sasl_username: SecretStr | None = None  # sasl.username
    sasl_password: SecretStr | None = None  # sasl.password
    ssl_ca_location: str | None = None  # ssl.ca.location: PEM file of the CA that signed the brokers' certificates
    ssl_certificate_location: str | None = None  # ssl.certificate.location: client certificate (mutual TLS)
    ssl_key_location: str | None = None  # ssl.key.location
    ssl_key_password: SecretStr | None = None  # ssl.key.password

    @model_validator(mode="after")
    def _poll_interval_covers_session(self) -> KafkaSettings:
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError(
                f"max_poll_interval_ms ({self.max_poll_interval_ms}) must be >= session_timeout_ms "
                f"({self.session_timeout_ms}): raise CAMPAIGNS_KAFKA__MAX_POLL_INTERVAL_MS or lower "
                "CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS"
            )
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password "
                "(CAMPAIGNS_KAFKA__SASL_MECHANISM, __SASL_USERNAME, __SASL_PASSWORD)"
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
        * The security settings become ``security.protocol``, ``sasl.*`` and ``ssl.*`` (only those that are set;
          secrets unwrapped here, at the client's edge, and nowhere else).
        * ``overrides`` win over all of it.
        """
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "logger": LibrdkafkaLog(),
        }
        conf.update(self.security_librdkafka())
        if "group.id" in overrides:
            conf["session.timeout.ms"] = self.session_timeout_ms
            conf["max.poll.interval.ms"] = self.max_poll_interval_ms
            # librdkafka's default heartbeat (3 s) would outlast a short session timeout.
            conf["heartbeat.interval.ms"] = max(100, min(3_000, self.session_timeout_ms // 3))
        conf.update(overrides)
        return conf

    def stage_consumer(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """The configuration of every consuming stage: the group, manual offset commits (a stage commits
        only after its batch is written and its records acknowledged), ``earliest`` for a new group, a short
        fetch wait (batches, not latency, are what the stages trade on), a bounded prefetch; ``overrides`` win.

        The prefetch: librdkafka's defaults queue up to 100,000 records per partition and 64 MB per consumer
        ahead of the application, so a worker's memory grew with the campaign (118 MB at 10k recipients, 247 MB
        at 1M). A few batches ahead per partition (2,000 records) and 8 MB per consumer keep the stages fed and
        the memory flat (182 MB at 1M in the same harness; docs/benchmarks.md, "Memory").

        The fetch size: the 8 MB count the records queued, not the fetch responses they were cut from, which
        librdkafka keeps whole while any of their records is queued; with its defaults (1 MB per partition, 50 MB
        per fetch) a sender reading a backlog held ~50 MB of them (the worker at 192 MB, 300k recipients). 256 KB
        per partition and 1 MB per fetch (at least one record batch is always returned, whatever its size) took
        it to 141 MB at the same rate and CPU (bench.compare, 2 interleaved rounds)."""
        return self.as_librdkafka(**{
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            "enable.partition.eof": False,
            "queued.min.messages": 2000,
            "queued.max.messages.kbytes": 8192,
            "max.partition.fetch.bytes": 262_144,
            "fetch.max.bytes": 1_048_576,
            **overrides,
        })

    def security_librdkafka(self) -> dict[str, str]:
        """The security part of :meth:`as_librdkafka` (empty for the default PLAINTEXT)."""
        conf: dict[str, str] = {}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        for key, secret in (("sasl.username", self.sasl_username), ("sasl.password", self.sasl_password),
                            ("ssl.key.password", self.ssl_key_password)):
            if secret is not None:
                conf[key] = secret.get_secret_value()
        for key, path in (("ssl.ca.location", self.ssl_ca_location),
                          ("ssl.certificate.location", self.ssl_certificate_location),
                          ("ssl.key.location", self.ssl_key_location)):
            if path:
                conf[key] = path
        return conf

    def faust_credentials(self) -> Any:
        """The same security for Faust/aiokafka (``faust.App(broker_credentials=...)``), or None for PLAINTEXT.

        SASL gives ``faust.SASLCredentials`` (with an SSL context for SASL_SSL), SSL an ``ssl.SSLContext``
        trusting ``ssl_ca_location`` (and presenting the client certificate, if set)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import ssl

        context = None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_ca_location)
            if self.ssl_certificate_location:
                context.load_cert_chain(
                    self.ssl_certificate_location, self.ssl_key_location,
                    self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
                )
        if self.security_protocol == "SSL":
            return context
        import faust

        assert self.sasl_username is not None and self.sasl_password is not None  # the validator checked
        return faust.SASLCredentials(
            username=self.sasl_username.get_secret_value(), password=self.sasl_password.get_secret_value(),
            mechanism=self.sasl_mechanism, ssl_context=context,
        )

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{hostport}" for hostport in self.bootstrap_servers.split(","))


class DatabaseSettings(BaseModel):
    """PostgreSQL. ``user`` is the application role (reads and writes data; owns nothing); migrations run as
    ``migration_user``, the role that owns the schema (``campaigns migrate``, :meth:`for_migrations`)."""

    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "campaigns"
    password: SecretStr = SecretStr("campaigns")
    name: str = "campaigns"
    pool_size: int = 10
    # The schema owner; None = migrations run as `user` (a deployment with one role, not recommended).
    migration_user: str | None = "campaigns_owner"
    migration_password: SecretStr | None = SecretStr("campaigns_owner")
    # libpq's sslmode (disable, allow, prefer, require, verify-ca, verify-full); None = libpq's default (prefer).
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    sslrootcert: str | None = None  # CA file for verify-ca / verify-full
    connect_timeout_s: int = 10

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": self.user, "password": self.password.get_secret_value(),
            "dbname": self.name, "connect_timeout": self.connect_timeout_s,
        }
        if self.sslmode:
            params["sslmode"] = self.sslmode
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        return params

    def sqlalchemy_url(self) -> Any:
        """The SQLAlchemy ``URL`` object (built from parts: nothing is parsed, so a password may hold any
        character)."""
        from sqlalchemy.engine import URL

        params = self._params()
        query = {k: str(params[k]) for k in ("sslmode", "sslrootcert", "connect_timeout") if k in params}
        return URL.create(
            "postgresql+psycopg2", username=self.user, password=self.password.get_secret_value(), host=self.host,
            port=self.port, database=self.name, query=query,
        )

    def url(self, *, hide_password: bool = False) -> str:
        """:meth:`sqlalchemy_url` as a string (every part percent-escaped by SQLAlchemy)."""
        return str(self.sqlalchemy_url().render_as_string(hide_password=hide_password))

    def dsn(self) -> str:
        """libpq DSN for raw psycopg2 connections (COPY, execute_values on the hot path), quoted by libpq's own
        rules (``psycopg2.extensions.make_dsn``): a password with spaces, quotes or ``=`` stays one value and
        cannot inject other connection parameters."""
        from psycopg2.extensions import make_dsn

        return make_dsn(**self._params())

    def for_migrations(self) -> DatabaseSettings:
        """These settings with the migration role's credentials (the schema owner)."""
        if self.migration_user is None:
            return self
        password = self.migration_password if self.migration_password is not None else SecretStr("")
        return self.model_copy(update={"user": self.migration_user, "password": password})


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
    # HTTP client for the WhatsApp/SMS transports: "http1" (campaigns/transports/http1.py, keep-alive HTTP/1.1
    # only) measured at half of aiohttp's client CPU per request, and "aiohttp" far cheaper than "httpx".
    http_client: Literal["aiohttp", "httpx", "http1"] = "http1"


class SenderSettings(BaseModel):
    batch_size: int = 500
    poll_timeout_s: float = 0.2
    max_in_flight: int = 200  # concurrent provider calls per channel per sender consumer
    # Sender consumers per channel in one worker, each a thread with its own consumer (same group), connection and
    # rate share: while one waits for its durable claim or result commit, another claims or sends. Partitions bound
    # it. Two measured 1.10x-1.18x one on a durable database (docs/benchmarks.md); a third paid nothing more. They
    # share the worker's campaign failure breakers (campaigns.core.breaker.CampaignBreakers), so a failing campaign
    # stops at the same attempt as with one; one more batch per extra consumer may already be claimed by then.
    consumers: int = Field(default=2, ge=1, le=16)
    claim_lease_s: float = 60.0  # a claim older than this whose send never recorded may be retried
    # Retry tier n holds a record retry_tier_delays_s[n-1] seconds (campaign.messages.<channel>.retry.<n>);
    # a retry waits in the largest tier not longer than its remaining wait (campaigns.core.retry).
    retry_tier_delays_s: tuple[float, ...] = DEFAULT_TIER_DELAYS_S

    @property
    def retry_tiers(self) -> int:
        return len(self.retry_tier_delays_s)


class CommandSettings(BaseModel):
    """``campaign.commands`` authentication (campaigns/core/signing.py, docs/security.md)."""

    # A signed command older (or newer) than this is refused as stale: a captured record cannot be replayed later.
    signature_window_s: float = 300.0
    key_cache_s: float = 10.0  # how long a consumer trusts its copy of a key (a revocation takes effect within it)
    # Rows (or segment ids) one IMPORT_CUSTOMERS / IMPORT_SEGMENT command may carry; the record must also fit the
    # producer's message.max.bytes (1 MB by default: ~5,000 customer rows of ~200 bytes). Files: `campaigns import`.
    import_max_rows: int = Field(default=10_000, ge=1, le=100_000)


class AnalyticsSettings(BaseModel):
    window_s: int = 60
    flush_interval_s: float = 0.5  # the Faust analytics writes the parts it changed to PostgreSQL this often
    failure_min_sample: int = 20
    # The Faust analytics (streams/tally.py): parts per merge_parts micro-batch (count_outcomes takes 20 forwarded
    # batches), the micro-batches' longest wait, and how many windows its windowed table keeps per campaign (a
    # later outcome reopens its window; nothing is dropped).
    faust_batch_size: int = 1000
    faust_batch_within_s: float = 0.2
    windows_kept: int = 60
    # A source partition with records left to count that has not moved for this long is read again from its next
    # expected offset (InOrder.unstick: what Faust's read loop skipped after a seek is not lost).
    faust_stall_s: float = 10.0
    # An outcome that reaches delivery.outcomes more than this after it occurred is not counted (logged, and
    # counted as late); in exchange the dedup holds only this long of outcome ids (plus two minutes), not every
    # id ever counted. Longer covers longer outages of Kafka between a send and its outcome, at the cost of memory:
    # about 0.3 kB per outcome of that span in the analytics process.
    allowed_lateness_s: float = Field(default=3600.0, gt=0)


class LiveSettings(BaseModel):
    """The Faust live view (``streams/live.py``): windowed per-campaign tables fed by ``campaign.analytics``."""

    web_host: str = "127.0.0.1"  # bind address and the host in the worker's canonical URL; loopback by default
    web_port: int = 6066
    store: str = "memory://"  # tables are rebuilt from their changelog topics at start; no RocksDB needed
    datadir: str | None = None  # Faust's data directory; None = <system temp>/campaigns-live/<app id>
    windows_kept: int = 10  # windows kept per campaign: table expiry and changelog retention = window_s * this
    batch_size: int = 1000  # campaign.analytics records per agent micro-batch (at most)
    batch_within_s: float = 0.5  # a micro-batch is applied after at most this long
    session_timeout_s: float = 10.0  # a crashed worker's partitions move after this long (Faust's default: 60)


class ApiSettings(BaseModel):
    """The HTTP API and dashboard (``campaigns api``, ``api/``; docs/api.md)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # a create payload of 100,000 recipients is ~1 MiB
    max_json_depth: int = Field(default=32, ge=4)  # payloads nest 3 levels; json recurses and would crash near 1,000
    rate_per_s: float = Field(default=20.0, gt=0)  # requests per second per token (per client address without one)
    burst: int = Field(default=40, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)  # the dashboard's one shared poller
    stream_recheck_s: float = Field(default=30.0, gt=0)  # an event stream re-checks its token this often
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)  # Idempotency-Keys older than this are forgotten
    idempotency_stale_s: float = Field(default=60.0, gt=0)  # an in-progress key older than this is taken over


class UnsubscribeSettings(BaseModel):
    """One-click unsubscribe (RFC 8058): how the per-recipient ``List-Unsubscribe`` of every email is made and
    checked (``campaigns/core/unsubscribe.py``; the endpoint is ``POST /unsubscribe`` of ``campaigns api``)."""

    # Signs the tokens; the senders and the API must share it. Change it in production: a token made with the
    # development default can be forged by anyone who read this file (docs/security.md).
    secret: SecretStr = SecretStr("dev-unsubscribe-secret")
    # The https link (RFC 8058 needs https; the local default is the API's plain http address).
    url: str = "http://127.0.0.1:8080/unsubscribe"
    mailto: str = "unsubscribe@example.com"  # the mailto: alternative (mail clients without one-click)

    def secret_bytes(self) -> bytes:
        return self.secret.get_secret_value().encode()


class WebhookSettings(BaseModel):
    """The webhook receiver (``campaigns webhooks``, ``app/webhooks.py``; docs/webhooks.md). The Twilio routes
    verify with ``providers.sms_auth_token`` (Twilio signs with the account's auth token)."""

    host: str = "127.0.0.1"  # loopback by default: put it behind the TLS proxy the providers call
    port: int = Field(default=8090, ge=0, le=65535)
    # The URL the providers call, as they see it (scheme, host, port, no trailing slash): Twilio signs the full
    # URL it requested, which behind a proxy is not the one this server sees. None = http://host:port.
    public_base_url: str | None = None
    whatsapp_app_secret: SecretStr = SecretStr("dev-whatsapp-app-secret")  # Meta app secret (X-Hub-Signature-256)
    whatsapp_verify_token: SecretStr = SecretStr("dev-whatsapp-verify-token")  # the subscription handshake's token
    email_secret: SecretStr = SecretStr("dev-email-webhook-secret")  # shared with the email provider's notifier
    email_window_s: float = Field(default=300.0, gt=0)  # an email notification older or newer than this is refused
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)


class ReceiptSettings(BaseModel):
    """The receipts stage (``streams/receipts.py``)."""

    batch_size: int = Field(default=2000, ge=1)
    # A receipt for a provider id no sent row has yet (the callback outran the sender's record) is held in
    # memory and retried, backing off from 0.5 s, for at most this long; then dropped, counted and logged.
    unknown_hold_s: float = Field(default=60.0, ge=0)
    max_held: int = Field(default=100_000, ge=0)  # beyond this many held receipts, new unknown ones are dropped


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    sender: SenderSettings = Field(default_factory=SenderSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    unsubscribe: UnsubscribeSettings = Field(default_factory=UnsubscribeSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    metrics_enabled: bool = True  # the worker's Prometheus metrics and /metrics endpoint
    metrics_host: str = "127.0.0.1"  # loopback by default: expose it on purpose, never by accident
    metrics_port: int = 9108  # 0 picks a free port (tests); PipelineMetrics.port tells which
    scheduler_interval_s: float = 0.2
    log_level: str = "info"
    # The young generation of the garbage collector of the worker, its analytics process, the simulator and the
    # benchmark harness (campaigns/collector.py): above what a batch keeps alive at once. 700 or less leaves
    # CPython's collector as it is.
    gc_young_threshold: int = Field(default=50_000, ge=0)


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return Settings()
