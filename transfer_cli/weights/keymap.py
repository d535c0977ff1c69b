"""Mapping the keys of a weights file onto the model's parameter names (`transfer.keys`).

In order: strip the first matching prefix, add a prefix, apply each regex rename, then keep the
keys the include/exclude globs allow. Pure functions of the keys and the rules, so the load report
can say exactly what each rule did, and a failed load can suggest the rule that would fit.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Callable, Iterable, Optional

import torch

from transfer_cli.config.schema import KeyMap
from transfer_cli.core.errors import ConfigError


@dataclass
class MappedWeights:
    """A state dict under its mapped keys, and what the mapping did to get there."""

    state: dict[str, torch.Tensor]
    rules: list[dict] = field(default_factory=list)  # one entry per rule: pattern, keys changed or dropped
    dropped: list[str] = field(default_factory=list)  # mapped keys left out by include/exclude


def map_keys(state: dict[str, torch.Tensor], keys: KeyMap, source: str = "the weights file") -> MappedWeights:
    """Apply `keys` to the keys of `state`; raises ConfigError when two keys end up with one name."""
    names = {key: key for key in state}  # key in the file -> key after the rules so far
    rules: list[dict] = []
    if keys.strip_prefix:
        changed = Counter()
        for key, name in names.items():
            prefix = next((p for p in keys.strip_prefix if p and name.startswith(p)), None)
            if prefix is not None:
                names[key] = name[len(prefix):]
                changed[prefix] += 1
        rules += [{"rule": "strip_prefix", "pattern": p, "changed": changed[p]} for p in keys.strip_prefix]
    if keys.add_prefix:
        names = {key: keys.add_prefix + name for key, name in names.items()}
        rules.append({"rule": "add_prefix", "pattern": keys.add_prefix, "changed": len(names)})
    for pattern, replacement in keys.rename.items():
        regex, changed = re.compile(pattern), 0
        for key, name in names.items():
            renamed = regex.sub(replacement, name)
            changed += renamed != name
            names[key] = renamed
        rules.append({"rule": "rename", "pattern": pattern, "replacement": replacement, "changed": changed})
    _refuse_collisions(names, source)
    mapped = MappedWeights({}, rules)
    reasons = Counter()
    for key, name in names.items():
        reason = _filtered_by(name, keys)
        if reason is None:
            mapped.state[name] = state[key]
        else:
            mapped.dropped.append(name)
            reasons[reason] += 1
    if keys.include:
        rules.append({"rule": "include", "pattern": list(keys.include), "dropped": reasons["include"]})
    rules += [{"rule": "exclude", "pattern": p, "dropped": reasons[p]} for p in keys.exclude]
    return mapped


def _filtered_by(name: str, keys: KeyMap) -> Optional[str]:
    """Why include/exclude leave `name` out ("include" or the exclude pattern), or None to keep it."""
    if keys.include and not any(fnmatchcase(name, p) for p in keys.include):
        return "include"
    return next((p for p in keys.exclude if fnmatchcase(name, p)), None)


def key_filter(keys: KeyMap) -> Callable[[str], bool]:
    """True for a model key the include/exclude patterns want loaded (others stay freshly initialised)."""
    return lambda name: _filtered_by(name, keys) is None


def _refuse_collisions(names: dict[str, str], source: str) -> None:
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise ConfigError([f"transfer.keys: '{seen[name]}' and '{key}' in {source} both map to '{name}'; "
                               f"make strip_prefix/add_prefix/rename keep keys distinct, or exclude one"])
        seen[name] = key


def suggest_key_map(file_keys: Iterable[str], model_keys: Iterable[str]) -> str:
    """A hint like "try transfer.keys.strip_prefix: ['module.']" when most file keys are model keys
    under another prefix, else ''. Matches on the longest shared dotted tail (two parts at least)."""
    tails: dict[str, str] = {}
    for key in model_keys:
        parts = key.split(".")
        for start in range(len(parts) - 1):
            tails.setdefault(".".join(parts[start:]), key)
    pairs: Counter = Counter()
    file_keys = list(file_keys)
    for key in file_keys:
        parts = key.split(".")
        for start in range(len(parts) - 1):
            tail = ".".join(parts[start:])
            if tail in tails:
                pairs[(key[: len(key) - len(tail)], tails[tail][: len(tails[tail]) - len(tail)])] += 1
                break
    pairs.pop(("", ""), None)
    if not pairs:
        return ""
    (old, new), count = pairs.most_common(1)[0]
    if count < len(file_keys) / 2:
        return ""
    if not new:
        return f"; the keys look like the model's under '{old}': try transfer.keys.strip_prefix: ['{old}']"
    if not old:
        return f"; the keys look like the model's without '{new}': try transfer.keys.add_prefix: '{new}'"
    return (f"; the keys look like the model's with '{old}' for '{new}': try transfer.keys.rename: "
            f"{{'^{re.escape(old)}': '{new}'}}")
