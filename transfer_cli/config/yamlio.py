"""Safe YAML reading with the line of every key, so errors can point at `file:line`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from transfer_cli.core.errors import ConfigError

KeyPath = tuple[str, ...]


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; users write `1e-3`)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text (safe: no Python objects are ever constructed)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506  ConfigLoader is a SafeLoader


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML file with `safe_load` only; returns (data, {key path: line}).

    Tags such as `!!python/object` are refused: a config is data, never code.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"], header="cannot read config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: {exc}"], header="cannot read config") from None
    try:
        node = yaml.compose(text, Loader=ConfigLoader)
        data = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = exc.problem or str(exc)
        if "python/" in problem or "could not determine a constructor" in problem:
            problem += " (YAML tags that build Python objects are not allowed; a config is plain data)"
        raise ConfigError([f"{where}: {problem}"], header="cannot parse YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: {exc}"], header="cannot parse YAML") from None
    lines: dict[KeyPath, int] = {}
    duplicates: list[str] = []
    if node is not None:
        _walk(node, (), lines, duplicates, path)
    if duplicates:
        raise ConfigError(duplicates, header="duplicate keys in YAML")
    return data, lines


def _walk(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], dups: list[str], path: Path) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        keypath = prefix + (key,)
        if key in seen:
            dups.append(f"{path}:{key_node.start_mark.line + 1}: {'.'.join(keypath)}: key appears twice")
        seen.add(key)
        lines[keypath] = key_node.start_mark.line + 1
        _walk(value_node, keypath, lines, dups, path)
