"""The base of every config section, and the one config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` has one line per problem: ``<file>: <key.path>: <reason>``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
