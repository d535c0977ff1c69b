"""Weights files: which file a reference names (a run directory, `run@last|@best`, or a file),
and reading one safely: safetensors, or `torch.load(weights_only=True)`; never arbitrary pickles."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from transfer_cli.config.resolve import holds_no_weights, recorded_stage
from transfer_cli.core.errors import CheckpointError, one_line
from transfer_cli.runs.checkpoints import WEIGHTS, alias_target, verify

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from `.pt/.pth/.bin` via `torch.load(weights_only=True)`.

    Never unpickles arbitrary objects: a file that would need that is refused.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a valid safetensors file ({one_line(exc)})") from None
    if suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported weights format '{suffix}'; expected one of "
                              f"{', '.join(WEIGHT_SUFFIXES)} or a run directory")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the verdict is ours to give
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        message = one_line(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            message = ("it holds Python objects other than tensors, and unpickling them could run code; "
                       "only plain state dicts are loaded (save with torch.save(model.state_dict()) or safetensors)")
        raise CheckpointError(f"refused to load {path}: {message}") from None
    return _as_state_dict(data, path)



def _as_state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), got {type(data).__name__}")
    return data



def resolve_weights(ref: str) -> tuple[Path, Path | None]:
    """`run_dir`, `run_dir@last|@best` or a weights file -> (weights file, run dir or None).

    A run dir means its best checkpoint (its last one when it has no best)."""
    path_text, at, alias = ref.rpartition("@")
    if not at or alias not in ("last", "best"):
        path_text, alias = ref, ""
    path = Path(path_text)
    if path.is_file():
        if alias:
            raise CheckpointError(f"{ref}: '@{alias}' only applies to a run directory")
        return path, None
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or weights file")
    if any(path.glob("seed-*/run.json")):
        raise CheckpointError(f"{path} is a multi-seed run; name one of its seed runs, e.g. {path}/seed-N")
    root = path / "checkpoints"
    if not root.is_dir():
        stage = recorded_stage(path)
        if stage:  # an evaluate or rank run: a run directory, but of a stage that trains nothing
            raise CheckpointError(holds_no_weights(path, stage))
        raise CheckpointError(f"{path}: not a run directory (no checkpoints/) and not a weights file")
    order = [alias] if alias else ["best", "last"]
    for name in order:
        target = alias_target(root, name)
        if target is not None:
            verify(target)
            return target / WEIGHTS, path
    raise CheckpointError(f"{path}: no complete '{order[0]}' checkpoint in {root}")
