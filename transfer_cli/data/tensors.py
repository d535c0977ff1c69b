"""The `tensors` data source: arrays `x` and `y` from `.npz` files or `.pt` files of plain tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from transfer_cli.core.errors import DataError
from transfer_cli.core.registry import did_you_mean
from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.data.labels import LabelParams, build_targets
from transfer_cli.data.registry import DATASETS
from transfer_cli.data.splitting import SplitParams, carve_splits, require, split_info

SUFFIXES = (".npz", ".pt", ".pth")


class TensorsParams(SplitParams, LabelParams):
    x_key: str = Field("x", description="name of the inputs array")
    y_key: str = Field("y", description="name of the targets array")
    add_channel: bool = Field(False, description="insert a channel axis: (N, H, W) images -> (N, 1, H, W), "
                                                 "(N, L) signals -> (N, 1, L)")


@DATASETS.register("tensors", params=TensorsParams)
def tensors(params: TensorsParams, *, seed: int) -> DataBundle:
    """Arrays x (N, ...) and y (N,) / (N, K) from .npz or .pt files (in memory)."""
    where = {split: f"{params.key_of(split)} ({path})" for split, path in params.sources().items()}
    arrays = {split: read_arrays(path, params.key_of(split), params) for split, path in params.sources().items()}
    xs = {split: x for split, (x, _) in arrays.items()}
    check_same_shape(xs, where)
    targets = build_targets({split: y for split, (_, y) in arrays.items()}, params.task, params.classes, where)
    given = {split: TensorSplit(x, targets.y[split]) for split, x in xs.items()}
    splits = carve_splits(given, params, targets.strata, where[params.reference()])
    return DataBundle(
        splits=splits, task=targets.task, num_outputs=targets.num_outputs, class_names=targets.class_names,
        info={"source": f"tensors from {', '.join(params.sources().values())}",
              **split_info(params, {name: len(s) for name, s in splits.items()}, targets.strata is not None)},
        fitted={"classes": targets.class_names} if targets.class_names else {},
    )


def read_arrays(path: str, key: str, params: TensorsParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the file that `key` names, x converted to what models take (see `as_inputs`)."""
    file = require(path, key)
    where = f"{key} ({path})"
    found = _load(file, where)
    missing = [key for key in (params.x_key, params.y_key) if key not in found]
    if missing:
        key = missing[0]
        option = "x_key" if key == params.x_key else "y_key"
        raise DataError(f"{where}: no array '{key}'{did_you_mean(key, list(found))}; it has: "
                        f"{', '.join(found) or 'nothing'} (set data.params.{option})")
    x, y = found[params.x_key], found[params.y_key]
    if len(x) != len(y):
        raise DataError(f"{where}: '{params.x_key}' has {len(x)} samples but '{params.y_key}' has {len(y)}")
    return as_inputs(x, params.add_channel, where), y


def array_inputs(path: str, key: str, x_key: str = "x", add_channel: bool = False) -> torch.Tensor:
    """The inputs array of a file without targets, converted as in training (see `as_inputs`)."""
    file = require(path, key)
    where = f"{key} ({path})"
    found = _load(file, where)
    if x_key not in found:
        raise DataError(f"{where}: no array '{x_key}'{did_you_mean(x_key, list(found))}; it has: "
                        f"{', '.join(found) or 'nothing'} (the run reads its inputs from '{x_key}')")
    return as_inputs(found[x_key], add_channel, where)


def _load(file: Path, where: str) -> dict[str, torch.Tensor]:
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{where}: unsupported file type '{suffix}'; expected {', '.join(SUFFIXES)}")
    if suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as archive:
                return {key: torch.from_numpy(np.ascontiguousarray(archive[key])) for key in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: cannot read it as .npz of numeric arrays ({_first_line(exc)})") from None
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure means an unusable file
        raise DataError(f"{where}: cannot read it as plain tensors with weights_only=True "
                        f"({_first_line(exc)}); save a dict of tensors: torch.save({{'x': x, 'y': y}}, path)") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DataError(f"{where}: expected a dict of tensors such as {{'x': ..., 'y': ...}}, got "
                        f"{type(data).__name__}")
    return data


def as_inputs(x: torch.Tensor, add_channel: bool, where: str) -> torch.Tensor:
    """float32 inputs (uint8 images scaled to [0, 1]); other integer inputs (token ids) stay int64."""
    if x.dim() < 2:
        raise DataError(f"{where}: inputs must be (N, ...) with at least one feature axis, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif x.dtype.is_floating_point or x.dtype == torch.bool:
        x = x.float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
            raise DataError(f"{where}: {bad} samples have NaN or Inf inputs")
    else:
        x = x.long()
    return x.unsqueeze(1) if add_channel else x


def check_same_shape(xs: dict[str, torch.Tensor], where: dict[str, str]) -> None:
    shape = tuple(next(iter(xs.values())).shape[1:])
    for split, x in xs.items():
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"{where[split]}: samples of shape {tuple(x.shape[1:])}, but the training samples are "
                            f"{shape}; every split must have the same sample shape")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
