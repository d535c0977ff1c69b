"""Checkpoints on disk: atomic writes, completion markers, `last`/`best` aliases, retention,
and safe reading of weights files.

Layout under `<run>/checkpoints/`: one directory per saved step (`step-00000120/`) holding
`model.safetensors`, `state.pt` (training state), `meta.json` and a `COMPLETE` marker written
last; `last` and `best` are symbolic links to step directories, switched atomically.
A directory without its marker does not count as a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from transfer_cli.errors import CheckpointError, RunFailed

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, write: Any) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> Path:
    """Write a step checkpoint atomically: temp dir, fsync, marker, rename. Returns its path.

    On failure (disk full, ...) the temp dir is removed and earlier checkpoints are untouched.
    """
    from safetensors.torch import save as save_safetensors

    final = root / f"step-{step:08d}"
    if is_complete(final):
        return final
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        _write_synced(tmp / WEIGHTS, lambda h: h.write(save_safetensors(tensors)))
        _write_synced(tmp / STATE, lambda h: torch.save(state, h))
        _write_synced(tmp / META, lambda h: h.write(json.dumps(meta, indent=2).encode()))
        _write_synced(tmp / COMPLETE, lambda h: h.write(b"ok\n"))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunFailed(f"could not write checkpoint step {step} in {root}: {exc.strerror or exc}; "
                        f"earlier checkpoints are intact") from exc
    return final


def point(root: Path, alias: str, target: Path) -> None:
    """Make `root/alias` a link to `target` atomically (a temp link renamed over the old one)."""
    tmp = root / f".{alias}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, root / alias)
    _fsync_dir(root)


def alias_target(root: Path, alias: str) -> Path | None:
    """The complete checkpoint `alias` points to, or None."""
    link = root / alias
    if not link.is_symlink():
        return None
    target = root / os.readlink(link)
    return target if is_complete(target) else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and is_complete(p))


def prune(root: Path, keep_last: int) -> None:
    """Delete step checkpoints beyond the newest `keep_last`, never `best` or `last`, and
    leftovers of interrupted writes. Called only after a new checkpoint is complete."""
    keep = {p for p in (alias_target(root, "best"), alias_target(root, "last")) if p is not None}
    steps = complete_checkpoints(root)
    keep.update(steps[-keep_last:])
    for path in steps:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_state(checkpoint: Path) -> dict:
    """The training state of a checkpoint (tensors and plain data only)."""
    try:
        return torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure here means an unusable file
        raise CheckpointError(f"cannot read training state {checkpoint / STATE}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
            raise CheckpointError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from None
    if suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported weights format '{suffix}'; expected one of "
                              f"{', '.join(WEIGHT_SUFFIXES)} or a run directory")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        message = _one_line(exc)
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
    root = path / "checkpoints"
    if not root.is_dir():
        raise CheckpointError(f"{path}: not a run directory (no checkpoints/) and not a weights file")
    order = [alias] if alias else ["best", "last"]
    for name in order:
        target = alias_target(root, name)
        if target is not None:
            return target / WEIGHTS, path
    raise CheckpointError(f"{path}: no complete '{order[0]}' checkpoint in {root}")


def read_meta(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
