"""Whole-pipeline fixtures (a per-test database, channels, a principal, a seeded audience)."""

from tests.pipeline_fixtures import audience, service, sessions  # noqa: F401 (fixtures)
