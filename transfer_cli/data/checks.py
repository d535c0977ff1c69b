"""Checks every data set passes before a model is built, whatever its source: the same sample
shape in every split, labels that fit the task, finite numbers. A problem is one DataError
naming the data set, the split, the sample and what was expected, before anything is written
(otherwise it would surface mid-training as a NaN loss or an index error)."""

from __future__ import annotations

import torch

from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.errors import DataError


def check_bundle(data: DataBundle, name: str) -> None:
    """Raise DataError on the first split that does not fit the task or the train split."""
    shape = data.input_shape
    for split_name, split in data.splits.items():
        where = f"data '{name}', split {split_name}"
        if len(split) == 0:
            raise DataError(f"{where}: no samples")
        if tuple(split.x.shape[1:]) != shape:
            raise DataError(f"{where}: samples have shape {tuple(split.x.shape[1:])}, but train samples have {shape}")
        _check_finite(split.x, f"{where}: input")
        _check_labels(split, data, where)


def _check_finite(values: torch.Tensor, what: str, chunk: int = 4096) -> None:
    if not values.is_floating_point():
        return
    for start in range(0, len(values), chunk):  # in chunks: the mask of a whole image set is big
        bad = ~torch.isfinite(values[start:start + chunk].reshape(min(chunk, len(values) - start), -1)).all(dim=1)
        if bad.any():
            index = start + int(bad.nonzero()[0])
            raise DataError(f"{what} of sample {index} has NaN/Inf values")


def _check_labels(split: TensorSplit, data: DataBundle, where: str) -> None:
    y, n = split.y, data.num_outputs
    if data.task == "regression":
        _check_finite(y, f"{where}: target")
        return
    expected_shape = (len(y), n) if data.task == "multilabel" else (len(y),)
    if tuple(y.shape) != expected_shape:
        raise DataError(f"{where}: {data.task} labels must have shape {expected_shape}, got {tuple(y.shape)}")
    if data.task == "multiclass":
        if y.is_floating_point():
            raise DataError(f"{where}: multiclass labels must be integers (class indices), got {y.dtype}")
        allowed = f"0..{n - 1} ({n} classes)"
        out_of_range = (y < 0) | (y >= n)
    else:
        allowed = "0 or 1"
        out_of_range = (y != 0) & (y != 1)
    if out_of_range.any():
        index = int(out_of_range.reshape(len(y), -1).any(dim=1).nonzero()[0])
        value = y[index].tolist()
        raise DataError(f"{where}: label {value} of sample {index} is out of range; expected {allowed}")
