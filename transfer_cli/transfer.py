"""Starting a model from pretrained weights: resolve, read safely, match keys, swap the head,
and report exactly what was loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from transfer_cli.checkpoint import read_weights, resolve_weights, sha256_of
from transfer_cli.errors import CheckpointError
from transfer_cli.models.base import TransferModel

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

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = f"new head ({self.head_reason})" if self.head_replaced else "head loaded"
        parts = [f"loaded {len(self.loaded)} tensors from {self.weights}", head]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name}: {_short(keys)}")
        return "; ".join(parts)


def _short(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_initial_weights(model: TransferModel, ref: str, head: str = "auto", strict: bool = True) -> LoadReport:
    """Load `ref` (run dir, run dir@last/@best, or weights file) into `model`.

    head: auto (new head when the output count differs), reset (always new), keep (must match).
    strict: any mismatch not explained by the head is an error.
    """
    path, run_dir = resolve_weights(ref)
    state = read_weights(path)
    report = LoadReport(source=ref, weights=str(path), sha256=sha256_of(path))
    target = model.state_dict()
    head_keys = [k for k in target if k.startswith(HEAD_PREFIX)]
    head_fits = all(k in state and state[k].shape == target[k].shape for k in head_keys)
    if head == "reset":
        report.head_replaced, report.head_reason = True, "head: reset"
    elif head == "auto" and not head_fits:
        report.head_replaced = True
        old = state.get(HEAD_PREFIX + "weight")
        report.head_reason = (f"{old.shape[0]} -> {model.num_outputs} outputs" if old is not None
                              else "no head in the weights")
    elif head == "keep" and not head_fits:
        raise CheckpointError(f"transfer.head: keep, but the head in {path} does not fit the model "
                              f"({model.num_outputs} outputs); use head: auto or reset")
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
    report.missing = [k for k in target if k not in to_load and not (report.head_replaced and k in head_keys)]
    report.loaded = sorted(to_load)
    problems = report.missing + report.unexpected + report.mismatched
    if strict and problems:
        raise CheckpointError(
            f"the weights in {path} do not fit the model: {report.summary()}. Check model.name/params against the "
            f"run that made them, or set transfer.strict: false to load what fits")
    if not to_load:
        raise CheckpointError(f"no tensor in {path} matches the model (e.g. {_short(sorted(state), 3)}); "
                              f"wrong architecture?")
    # a replaced head keeps the fresh initialisation the model was built with
    model.load_state_dict(to_load, strict=False)
    return report


def load_exact(model: torch.nn.Module, ref: str) -> tuple[Path, Optional[Path]]:
    """Load a checkpoint that must fit the model exactly (evaluation)."""
    path, run_dir = resolve_weights(ref)
    state = read_weights(path)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        details = "; ".join(f"{n}: {_short(keys)}" for n, keys in
                            (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys)
        head_differs = any(m.startswith(HEAD_PREFIX) for m in mismatched)
        hint = " (its head does not match the number of classes in the data)" if head_differs else ""
        raise CheckpointError(f"the checkpoint {path} does not fit the model{hint}: {details}")
    model.load_state_dict(state)
    return path, run_dir
