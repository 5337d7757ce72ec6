"""The API server's settings: the ``api`` group of the one settings object (``CAMPAIGNS_API__*``)."""

from __future__ import annotations

from campaigns.settings import ApiSettings, load_settings

__all__ = ["ApiSettings", "load_api_settings"]


def load_api_settings() -> ApiSettings:
    return load_settings().api
