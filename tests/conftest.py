"""Service fixtures shared by every test layer.

Kafka and PostgreSQL are the real ones: the project's own (``make services``), an address given in the
environment, or containers via testcontainers when a Docker engine is available. When none can be
reached a test fails under ``CI`` (a green CI run must have touched the services) and skips locally.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns.settings import DatabaseSettings, KafkaSettings, Settings

CI = bool(os.environ.get("CI"))
REPO_ROOT = Path(__file__).resolve().parents[1]


def service_unreachable(what: str, detail: str) -> None:
    message = f"{what} is unreachable ({detail}); run `make services` or set CAMPAIGNS_* addresses"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kafka_reachable(bootstrap: str) -> str | None:
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except Exception as exc:  # any client error means "not reachable" here
        return str(exc)
    return None if metadata.brokers else "no brokers in metadata"


def _broker_version() -> str:
    """The version the running broker logged at start (the project's own broker), else the pinned one."""
    log = REPO_ROOT / ".state" / "kafka" / "logs" / "server.log"
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if "Kafka version:" in line:
                return line.rsplit("Kafka version:", 1)[1].strip()
    return "unknown"


@pytest.fixture(autouse=True)
def _collector_untouched() -> Iterator[None]:
    """No test may leave this process's garbage collector tuned: ``campaigns.collector.tune_collector`` is for
    process entry points (frozen objects are invisible to ``gc.get_referrers``, which libraries rely on)."""
    yield
    import gc

    assert gc.get_freeze_count() == 0, "a test ran a process entry point's collector set-up in the test process"


def pytest_report_header(config: pytest.Config) -> list[str]:
    bootstrap = os.environ.get("CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS", KafkaSettings().bootstrap_servers)
    return [f"kafka broker: Apache Kafka {_broker_version()} at {bootstrap}; CI={CI}"]


@pytest.fixture(scope="session")
def kafka_settings() -> Iterator[KafkaSettings]:
    configured = "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS" in os.environ
    settings = Settings().kafka
    error = _kafka_reachable(settings.bootstrap_servers)
    if error is None:
        yield settings
        return
    if not configured and _docker_engine_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.4.0").with_kraft() as container:
            yield settings.model_copy(update={"bootstrap_servers": container.get_bootstrap_server()})
        return
    service_unreachable(f"Kafka at {settings.bootstrap_servers}", error)


@pytest.fixture(scope="session")
def database_server() -> Iterator[DatabaseSettings]:
    """The application's database settings (the application role). Its :meth:`~DatabaseSettings.for_migrations`
    role (the schema owner, CREATEDB) makes and drops the tests' databases and migrates them, as
    ``campaigns migrate`` does; the tests then connect as the application role, which only reads and writes."""
    import psycopg2

    configured = any(k.startswith("CAMPAIGNS_DATABASE__") for k in os.environ)
    settings = Settings().database
    try:
        psycopg2.connect(settings.dsn(), connect_timeout=5).close()
        if settings.migration_user is not None:
            psycopg2.connect(settings.for_migrations().model_copy(update={"name": "postgres"}).dsn(),
                             connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        if not configured and _docker_engine_available():
            from testcontainers.postgres import PostgresContainer

            with PostgresContainer("postgres:15", username="campaigns", password="campaigns") as pg:
                yield settings.model_copy(  # one role (the container's superuser) for everything
                    update={"host": pg.get_container_host_ip(), "port": int(pg.get_exposed_port(5432)),
                            "migration_user": None}
                )
            return
        service_unreachable(f"PostgreSQL at {settings.host}:{settings.port}", str(exc).strip())
    yield settings


@pytest.fixture(scope="session")
def template_database(database_server: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A database migrated to head once per session; every test gets a copy of it."""
    import psycopg2

    from campaigns.db.engine import upgrade

    name = f"campaigns_tmpl_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(database_server.for_migrations().model_copy(update={"name": "postgres"}).dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    settings = database_server.model_copy(update={"name": name})
    try:
        upgrade(settings)
        yield settings
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def database_settings(template_database: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A fresh, migrated database for this test alone (a copy of the session's template, ~0.2 s), dropped
    afterwards: no test sees another's campaigns, so a worker's scheduler never picks up a stranger's."""
    import psycopg2

    name = f"campaigns_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(template_database.for_migrations().model_copy(update={"name": "postgres"}).dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database.name}"')
    try:
        yield template_database.model_copy(update={"name": name})
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def topic_prefix(kafka_settings: KafkaSettings) -> Iterator[str]:
    """Unique per test, so tests never share topics or consumer groups; the test's topics are deleted
    afterwards (thousands of leftover partitions would slow every broker restart and fault scenario)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    _delete_topics_with_prefix(kafka_settings.bootstrap_servers, prefix)


def _delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                future.result(timeout=30)
    except Exception as exc:  # cleanup must never hide the test's own result
        print(f"warning: could not delete topics {prefix}*: {exc}")


@pytest.fixture
def settings(kafka_settings: KafkaSettings, database_settings: DatabaseSettings, topic_prefix: str) -> Settings:
    return Settings(
        # 3 partitions per topic: enough to exercise rebalances and shares, and cheap for the broker.
        kafka=kafka_settings.model_copy(update={"topic_prefix": topic_prefix, "partitions": 3}),
        database=database_settings,
        metrics_port=0,  # a worker's /metrics endpoint on a free port: tests never fight over 9108
    )
