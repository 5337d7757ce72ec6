"""The API server's settings: ``CAMPAIGNS_API__*`` (the rest of the ``CAMPAIGNS_*`` settings as everywhere)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # a create payload of 100,000 recipients is ~1 MiB
    max_json_depth: int = Field(default=32, ge=4)  # payloads nest 3 levels; json recurses and would crash near 1,000
    rate_per_s: float = Field(default=20.0, gt=0)  # requests per second per token (per client address without one)
    burst: int = Field(default=40, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)  # the dashboard's one shared poller
    stream_recheck_s: float = Field(default=30.0, gt=0)  # an event stream re-checks its token this often
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)  # keys older than this are forgotten
    idempotency_stale_s: float = Field(default=60.0, gt=0)  # an in-progress key older than this is taken over


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", env_nested_delimiter="__", extra="ignore")
    api: ApiSettings = ApiSettings()


def load_api_settings() -> ApiSettings:
    return _Env().api
