"""Checks of the data against the rest of the config, made before any training time is spent."""

from __future__ import annotations

from torch import nn

from transfer_cli.data.bundle import DataBundle
from transfer_cli.errors import DataError


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
