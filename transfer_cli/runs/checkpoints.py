"""Checkpoints on disk: atomic writes, completion markers, `last`/`best` aliases, retention.

Layout under `<run>/checkpoints/`: one directory per saved step (`step-00000120/`) holding
`model.safetensors`, `state.pt` (training state), `meta.json` and a `COMPLETE` marker written
last; `last` and `best` are symbolic links to step directories, switched atomically.
A directory without its marker does not count as a checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from transfer_cli.core.errors import CheckpointError, RunFailed, one_line
from transfer_cli.runs.provenance import sha256_of
from transfer_cli.runs.rundir import fsync_dir

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` and force it to disk (the one place a checkpoint file is written)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> Path:
    """Write a step checkpoint atomically and return its path.

    Every file is serialized in memory, written to a temporary directory next to the final one
    and fsync'd; the `COMPLETE` marker (the sha256 of each file) is written last; then the
    directory is renamed into place. On failure (disk full, ...) the temporary directory is
    removed and earlier checkpoints are untouched. A checkpoint already at this step (left by
    a run that was stopped and resumed from an earlier one) is replaced, never reused.
    """
    from safetensors.torch import save as save_safetensors

    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        files = {WEIGHTS: save_safetensors(tensors), STATE: _torch_bytes(state),
                 META: json.dumps(meta, indent=2).encode()}
        for name, data in files.items():
            _write_synced(tmp / name, data)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        _write_synced(tmp / COMPLETE, json.dumps({"sha256": digests}, indent=2).encode())
        fsync_dir(tmp)
        _move_into_place(tmp, final)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunFailed(f"could not write checkpoint step {step} in {root}: {exc.strerror or exc}; "
                        f"earlier checkpoints are intact") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is first renamed aside, then deleted, so
    that at every moment the name holds either the old or the new complete directory, or
    (briefly) nothing, and never a mix."""
    if not final.exists():
        os.rename(tmp, final)
        return
    aside = final.parent / f".old-{final.name}-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def verify(checkpoint: Path) -> None:
    """Check every file of a complete checkpoint against the sha256 in its marker.

    Raises CheckpointError naming the first file that is missing or differs."""
    try:
        recorded = json.loads((checkpoint / COMPLETE).read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {checkpoint} has no readable completion marker") from None
    for name, expected in recorded.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} is missing {name}")
        if sha256_of(path) != expected:
            raise CheckpointError(f"{path} is corrupt (its sha256 differs from the one recorded when it was saved)")


def point(root: Path, alias: str, target: Path) -> None:
    """Make `root/alias` a link to `target` atomically (a temp link renamed over the old one)."""
    tmp = root / f".{alias}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, root / alias)
    fsync_dir(root)


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
    for leftover in root.glob(".*"):  # temp dirs and links of writes that were killed
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def load_state(checkpoint: Path) -> dict:
    """The training state of a checkpoint (tensors and plain data only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure here means an unusable file
        raise CheckpointError(f"cannot read training state {checkpoint / STATE}: {one_line(exc)}") from None


def read_meta(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
