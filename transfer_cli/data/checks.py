"""Checks every data set passes before a model is built, whatever its source: the same sample
shape in every split, labels that fit the task, finite numbers. A problem is one DataError
naming the data set, the split, the sample and what was expected, before anything is written
(otherwise it would surface mid-training as a NaN loss or an index error)."""

from __future__ import annotations

import torch

from torch import nn

from transfer_cli.core.errors import DataError
from transfer_cli.data.bundle import DataBundle, Split


def check_bundle(data: DataBundle, name: str) -> None:
    """Raise DataError on the first split that does not fit the task or the train split."""
    shape = data.input_shape
    for split_name, split in data.splits.items():
        where = f"data '{name}', split {split_name}"
        if len(split) == 0:
            raise DataError(f"{where}: no samples")
        if tuple(split.sample_shape) != shape:
            raise DataError(f"{where}: samples have shape {tuple(split.sample_shape)}, but "
                            f"{next(iter(data.splits))} samples have {shape}")
        if hasattr(split, "x"):  # in memory; decoded-on-the-fly sources check each file as they read it
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


def _check_labels(split: Split, data: DataBundle, where: str) -> None:
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
        allowed = (f"0..{n - 1} ({n} classes)" if n >= 2 else  # never 0..0 or 0..-1
                   f"a class index, but the data declares {n} class{'es' * (n != 1)} (a classification task "
                   f"needs at least 2)")
        out_of_range = (y < 0) | (y >= n)
    else:
        allowed = "0 or 1"
        out_of_range = (y != 0) & (y != 1)
    if out_of_range.any():
        index = int(out_of_range.reshape(len(y), -1).any(dim=1).nonzero()[0])
        value = y[index].tolist()
        raise DataError(f"{where}: label {value} of sample {index} is out of range; expected {allowed}")


def check_split(data: DataBundle, split: str) -> None:
    """The split reported besides val (eval.split) must exist, or the run would fail at its end."""
    if split not in data.splits:
        raise DataError(f"eval.split: the data has no '{split}' split (it has: {', '.join(data.splits)}); give "
                        f"data.params.{split} or {split}_fraction where the data set has them, or set eval.split")


def check_batches(data: DataBundle, batch_size: int, model: nn.Module) -> None:
    """A training batch of a single sample cannot be normalized by BatchNorm (PyTorch raises in
    the middle of an epoch); refuse a train split / batch size that would make one."""
    if "train" not in data.splits:
        return
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    size = len(data.split("train"))
    if has_batchnorm and size % batch_size == 1:
        what = ("has 1 sample" if size == 1
                else f"has {size} samples, so with batch_size {batch_size} the last batch has 1")
        raise DataError(f"data: the train split {what}, and the model's BatchNorm cannot train on a batch of one; "
                        f"change data.batch_size (e.g. {batch_size + 1}) or the training data")
