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
    _text, _node, data, lines = _read(path)
    return data, lines


EXAMPLE = "e.g. `data: {name: motifs}`"


def read_mapping(path: Path, shown: str = "", hint: str = "") -> tuple[dict, dict[KeyPath, int]]:
    """`read_yaml` for a file that must hold a mapping of keys (a config, an `extends` target, a
    run's config.yaml): a file that is empty, only comments, `null`, a scalar or a list is one
    clear error naming it. `shown`: how to name the file (default: its path); `hint`: what to do."""
    text, node, data, lines = _read(path)
    name = shown or str(path)
    suggestion = hint or f"expected a mapping of keys, {EXAMPLE}"
    if data is None:
        if not text.strip():
            what = "the file is empty"
        elif node is None:
            what = "the file holds only comments"
        else:
            line = _first_content_line(text)
            what = f"the file holds only `{line}`" + ("" if line.lower() in ("null", "~") else " (a null document)")
        raise ConfigError([f"{name}: {what}; {suggestion}"], header="empty config")
    if not isinstance(data, dict):
        raise ConfigError([f"{name}: the top level must be a mapping of keys ({EXAMPLE}); got {_shape(data)}"
                           + (f"; {hint}" if hint else "")])
    return data, lines


def _first_content_line(text: str) -> str:
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            return stripped
    return "null"


def _shape(data: Any) -> str:
    if isinstance(data, list):
        return f"a list of {len(data)} item{'s' if len(data) != 1 else ''}" if data else "an empty list"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(type(data), type(data).__name__)
    shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:37] + "..."
    return f"{kind}, {shown}"


def _read(path: Path) -> tuple[str, Any, Any, dict[KeyPath, int]]:
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
    return text, node, data, lines


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
