"""Read a config: YAML files joined by `extends`, then `--set` overrides, each key remembering
where it was set (`file:line` or `--set ...`) so that errors can point at it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transfer_cli.config.yamlio import EXAMPLE, ConfigLoader, KeyPath, parse_yaml, read_mapping
from transfer_cli.core.errors import ConfigError

# Sections naming a registered component: a child that changes `name` replaces `params`.
COMPONENTS = ("data", "model", "optim", "schedule", "loss")


@dataclass
class RawConfig:
    """A config before validation: plain data plus where each key came from."""

    data: dict[str, Any]
    origins: dict[KeyPath, str] = field(default_factory=dict)
    source: str = "<config>"

    def origin_of(self, loc: KeyPath) -> str:
        """Where the key at `loc` (or its closest set parent) was written."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.origins:
                return self.origins[loc[:end]]
        return self.source

    def merged(self, child: "RawConfig") -> "RawConfig":
        """This config with `child` on top (deep merge, component rule, lists replaced)."""
        data = copy.deepcopy(self.data)
        origins = dict(self.origins)
        _merge_into(data, child.data, (), origins)
        origins.update(child.origins)
        return RawConfig(data, origins, child.source)


def _drop_origins(origins: dict[KeyPath, str], prefix: KeyPath) -> None:
    for key in [k for k in origins if k[: len(prefix)] == prefix]:
        del origins[key]


def _merge_into(base: dict, child: dict, prefix: KeyPath, origins: dict[KeyPath, str]) -> None:
    for key, value in child.items():
        path = prefix + (key,)
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            renamed = not prefix and key in COMPONENTS and "name" in value and value["name"] != old.get("name")
            if renamed:
                old.pop("params", None)
                _drop_origins(origins, path + ("params",))
            _merge_into(old, value, path, origins)
        else:
            _drop_origins(origins, path)
            base[key] = copy.deepcopy(value)


def load_raw(path: str | Path, shown: str = "", hint: str = "") -> RawConfig:
    """Read a config file and everything it `extends` (relative to the file; cycles refused).
    `shown`/`hint`: how an error names the file and what it suggests (e.g. for a run's config.yaml)."""
    return _load_file(Path(path), stack=(), shown=shown, hint=hint)


def _load_file(path: Path, stack: tuple[Path, ...], shown: str = "", hint: str = "") -> RawConfig:
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(str(p) for p in stack + (resolved,))
        raise ConfigError([f"{path}: extends cycle: {chain}"], header="bad extends")
    data, lines = read_mapping(path, shown, hint)
    origins = {key: f"{path}:{line}" for key, line in lines.items()}
    parents = data.pop("extends", None)
    _drop_origins(origins, ("extends",))
    own = RawConfig(data, origins, str(path))
    if parents is None:
        return own
    if isinstance(parents, str):
        parents = [parents]
    where = f"{path}:{lines.get(('extends',), '?')}"
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError([f"{where}: extends: expected a path or a list of paths, got {parents!r}"])
    merged = RawConfig({}, {}, str(path))
    for parent in parents:
        parent_path = (path.parent / parent)
        if not parent_path.is_file():
            raise ConfigError(
                [f"{where}: extends: file not found: {parent_path} (paths are relative to {path.parent})"],
                header="bad extends",
            )
        merged = merged.merged(_load_file(
            parent_path, stack + (resolved,), shown=f"{parent_path} (extended by {where})",
            hint=f"expected a mapping of keys, {EXAMPLE}; or remove it from the extends of {path}"))
    return merged.merged(own)


def parse_set(expr: str) -> RawConfig:
    """`key.path=value` (value parsed as YAML) -> a one-key RawConfig layer."""
    key, sep, text = expr.partition("=")
    keypath = tuple(part.strip() for part in key.split("."))
    if not sep or not all(keypath):
        raise ConfigError([f"--set {expr}: expected KEY.PATH=VALUE, e.g. --set optim.lr=0.01"], header="bad --set")
    try:
        empty = yaml.compose(text, Loader=ConfigLoader) is None  # nothing, or only a comment
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"--set {expr}: value is not valid YAML ({exc})"], header="bad --set") from None
    if empty:
        what = "no value after '='" if not text.strip() else f"the value {text.strip()!r} is only a comment"
        raise ConfigError([f"--set {expr}: {what}; give one, e.g. --set {key.strip()}=VALUE (a section takes "
                           f"a mapping: --set train={{epochs: 3}}), or --set {key.strip()}=null to clear the key"],
                          header="bad --set")
    data: dict[str, Any] = {}
    node = data
    for part in keypath[:-1]:
        node = node.setdefault(part, {})
    node[keypath[-1]] = value
    return RawConfig(data, {keypath: f"--set {expr}"}, f"--set {expr}")


def apply_sets(raw: RawConfig, sets: list[str]) -> RawConfig:
    """Apply `--set` overrides in order; a later one wins."""
    for expr in sets:
        layer = parse_set(expr)
        _check_set_target(raw, layer, expr)
        source = raw.source
        raw = raw.merged(layer)
        raw.source = source
    return raw


def _check_set_target(raw: RawConfig, layer: RawConfig, expr: str) -> None:
    """Refuse `--set a.b=1` when `a` holds a non-mapping value (it would silently replace it)."""
    keypath = next(iter(layer.origins))
    node: Any = raw.data
    for depth, part in enumerate(keypath[:-1]):
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
        if node is not None and not isinstance(node, dict):
            where = ".".join(keypath[: depth + 1])
            raise ConfigError([f"--set {expr}: '{where}' is {node!r}, not a mapping"], header="bad --set")
