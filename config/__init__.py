"""Typed configuration: embedded defaults, a TOML file, EBR_* variables and flags."""

from config.settings import (
    ConfigError,
    EbrConfig,
    EmbedConfig,
    FeatureConfig,
    GcsConfig,
    IndexConfig,
    ModelConfig,
    OrchestrationConfig,
    ServingConfig,
    StoreConfig,
    TrainConfig,
    WorldConfig,
    load_config,
)

__all__ = [
    "ConfigError",
    "EbrConfig",
    "EmbedConfig",
    "FeatureConfig",
    "GcsConfig",
    "IndexConfig",
    "ModelConfig",
    "OrchestrationConfig",
    "ServingConfig",
    "StoreConfig",
    "TrainConfig",
    "WorldConfig",
    "load_config",
]
