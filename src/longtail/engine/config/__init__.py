"""The run configuration: schema (typed sections), overrides, recipes and checks.

- ``schema``: ``RunConfig`` and its sections, the YAML reader, ``describe_keys`` / ``dump_yaml``.
- ``overrides``: mappings and ``section.key=value`` merged in with key and type checks.
- ``recipes``: shipped protocols and method presets, user files, ``build_config``.
- ``validate``: ranges, choices, cross-field rules, component options, the method's own checks.
"""

from longtail.engine.config.overrides import apply_mapping, parse_override, set_override
from longtail.engine.config.recipes import (available_protocols, available_recipes, build_config, config_from_dict,
                                            load_methods, load_recipe, method_overrides, protocol_methods, read_yaml)
from longtail.engine.config.schema import (OPEN_SECTIONS, RECIPE_DIR, SELECTABLE_METRICS, TYPED_SECTIONS,
                                           ComponentConfig, ConfigError, DataConfig, ModelConfig, OptimConfig,
                                           RunConfig, TrainConfig, dataset_title, describe_keys, dump_yaml, load_yaml)
from longtail.engine.config.validate import check_run_name, validate

__all__ = [
    "OPEN_SECTIONS", "RECIPE_DIR", "SELECTABLE_METRICS", "TYPED_SECTIONS", "ComponentConfig", "ConfigError",
    "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "apply_mapping", "available_protocols",
    "available_recipes", "build_config", "check_run_name", "config_from_dict", "dataset_title", "describe_keys",
    "dump_yaml", "load_methods", "load_recipe", "load_yaml", "method_overrides", "parse_override",
    "protocol_methods", "read_yaml", "set_override", "validate",
]
