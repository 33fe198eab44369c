"""Typed configuration: embedded defaults, a TOML file, EBR_* variables and flags."""

from config.settings import (
    ConfigError,
    EbrConfig,
    FeatureConfig,
    GcsConfig,
    ModelConfig,
    StoreConfig,
    TrainConfig,
    WorldConfig,
    load_config,
)

__all__ = [
    "ConfigError",
    "EbrConfig",
    "FeatureConfig",
    "GcsConfig",
    "ModelConfig",
    "StoreConfig",
    "TrainConfig",
    "WorldConfig",
    "load_config",
]
