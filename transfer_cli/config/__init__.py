"""Experiment configs: YAML files with `extends`, `--set` overrides and pydantic validation."""

from transfer_cli.config.loader import RawConfig, load_raw, parse_set
from transfer_cli.config.schema import Experiment

__all__ = ["Experiment", "RawConfig", "load_raw", "parse_set"]
