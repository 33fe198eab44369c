"""Typed configuration: embedded defaults, a TOML file, EBR_* variables and flags."""

from config.settings import (
    ConfigError,
    EbrConfig,
    GcsConfig,
    StoreConfig,
    WorldConfig,
    load_config,
)

__all__ = [
    "ConfigError",
    "EbrConfig",
    "GcsConfig",
    "StoreConfig",
    "WorldConfig",
    "load_config",
]
