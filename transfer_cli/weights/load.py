"""Starting a model from pretrained weights: resolve, read safely, map and match keys, swap the
head, and report exactly what was loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from transfer_cli.config.schema import KeyMap
from transfer_cli.core.errors import CheckpointError
from transfer_cli.models.base import TransferModel
from transfer_cli.runs.provenance import sha256_of
from transfer_cli.weights.files import read_weights, resolve_weights
from transfer_cli.weights.keymap import key_filter, map_keys, suggest_key_map

HEAD_PREFIX = "head."


@dataclass
class LoadReport:
    """What happened when the initial weights were loaded (stored in run.json)."""

    source: str
    weights: str
    sha256: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    head_replaced: bool = False
    head_reason: str = ""
    key_map: dict = field(default_factory=dict)  # transfer.keys as applied
    key_rules: list[dict] = field(default_factory=list)  # what each rule changed or dropped
    dropped: list[str] = field(default_factory=list)  # left out by include/exclude: not an error
    # the file's own head (mapped keys), kept for what needs the source task's predictions
    # (transfer rank: NCE, LEEP); not part of the report
    source_head: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        report = asdict(replace(self, source_head={}))
        del report["source_head"]
        return report

    def summary(self) -> str:
        head = f"new head ({self.head_reason})" if self.head_replaced else "head loaded"
        parts = [f"loaded {len(self.loaded)} tensors from {self.weights}", head]
        renamed = [f"{r['rule']} {r['pattern']!r} x{r['changed']}" for r in self.key_rules if r.get("changed")]
        if renamed:
            parts.append("keys mapped: " + ", ".join(renamed))
        if self.dropped:
            parts.append(f"{len(self.dropped)} left out by include/exclude: {_short(self.dropped)}")
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name}: {_short(keys)}")
        return "; ".join(parts)


def _short(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_initial_weights(model: TransferModel, ref: str, head: str = "auto", strict: bool = True,
                         keys: Optional[KeyMap] = None) -> LoadReport:
    """Load `ref` (run dir, run dir@last/@best, or weights file) into `model`.

    head: auto (new head when the output count differs), reset (always new), keep (must match).
    strict: any mismatch not explained by the head is an error.
    keys: how the file's keys map onto the model's (transfer.keys); model keys that include/exclude
    leave out keep their fresh initialisation and are not reported missing.
    """
    keys = keys or KeyMap()
    path, run_dir = resolve_weights(ref)
    original = read_weights(path)
    mapped = map_keys(original, keys, source=str(path))
    state = mapped.state
    report = LoadReport(source=ref, weights=str(path), sha256=sha256_of(path), key_map=keys.model_dump(),
                        key_rules=mapped.rules, dropped=sorted(mapped.dropped),
                        source_head={k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)})
    wanted = key_filter(keys)
    target = model.state_dict()
    head_keys = [k for k in target if k.startswith(HEAD_PREFIX)]
    report.head_replaced, report.head_reason = _head_decision(head, state, target, model.num_outputs, path,
                                                              head_left_out=not all(map(wanted, head_keys)))
    to_load = {}
    for key, tensor in state.items():
        if report.head_replaced and key.startswith(HEAD_PREFIX):
            continue
        if key not in target:
            report.unexpected.append(key)
        elif tensor.shape != target[key].shape:
            report.mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(target[key].shape)}")
        else:
            to_load[key] = tensor
    report.missing = [k for k in target if k not in to_load and wanted(k)
                      and not (report.head_replaced and k in head_keys)]
    report.loaded = sorted(to_load)
    problems = report.missing + report.unexpected + report.mismatched
    hint = suggest_key_map(state, target) if report.missing or report.unexpected else ""
    if strict and problems:
        raise CheckpointError(
            f"the weights in {path} do not fit the model: {report.summary()}{hint}. Check model.name/params "
            f"against the run that made them, map the keys with transfer.keys, or set transfer.strict: false "
            f"to load what fits")
    if not to_load:
        why = (f"e.g. {_short(sorted(state), 3)}" if state
               else f"transfer.keys include/exclude left out all {len(original)} keys")
        raise CheckpointError(f"no tensor in {path} matches the model ({why}){hint}; wrong architecture, "
                              f"or keys to map with transfer.keys?")
    # a replaced head keeps the fresh initialisation the model was built with
    model.load_state_dict(to_load, strict=False)
    return report


def _head_decision(head: str, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], num_outputs: int,
                   path: Path, head_left_out: bool) -> tuple[bool, str]:
    """(replace the head?, why) for transfer.head auto | reset | keep."""
    head_fits = all(k in state and state[k].shape == v.shape for k, v in target.items() if k.startswith(HEAD_PREFIX))
    if head == "reset":
        return True, "head: reset"
    if head == "keep" and not head_fits:
        raise CheckpointError(f"transfer.head: keep, but the head in {path} does not fit the model "
                              f"({num_outputs} outputs); use head: auto or reset")
    if head_fits:
        return False, ""
    old = state.get(HEAD_PREFIX + "weight")
    if old is not None:
        return True, f"{old.shape[0]} -> {num_outputs} outputs"
    return True, "head left out by transfer.keys" if head_left_out else "no head in the weights"


def load_exact(model: torch.nn.Module, ref: str, keys: Optional[KeyMap] = None) -> tuple[Path, Optional[Path]]:
    """Load a checkpoint that must fit the model exactly (evaluation). `keys` (transfer.keys)
    maps the keys of a weights file from elsewhere; a run dir's weights are ours and need none."""
    path, run_dir = resolve_weights(ref)
    state = read_weights(path)
    if keys is not None and run_dir is None:
        state = map_keys(state, keys, source=str(path)).state
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        details = "; ".join(f"{n}: {_short(keys)}" for n, keys in
                            (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys)
        # the head alone differing means other classes; anything else differing means another model
        only_head = bool(mismatched) and not (missing or unexpected) and all(m.startswith(HEAD_PREFIX)
                                                                              for m in mismatched)
        backbone_differs = any(not m.startswith(HEAD_PREFIX) for m in mismatched)
        hint = (" (its head does not match the number of classes in the data)" if only_head else
                " (it is another architecture than the config's model: give the config that trained it)"
                if backbone_differs else "")
        key_hint = suggest_key_map(state, target) if (missing or unexpected) and run_dir is None else ""
        raise CheckpointError(f"the checkpoint {path} does not fit the model{hint}: {details}{key_hint}")
    model.load_state_dict(state)
    return path, run_dir
