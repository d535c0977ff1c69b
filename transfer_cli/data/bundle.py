"""Splits and the bundle a data set builder returns.

In-memory splits are batched by tensor indexing (no per-sample collation on the hot path);
`loader.DatasetSplit` offers the same interface for data decoded by DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Union

import torch

from transfer_cli.core.errors import DataError

TASKS = ("multiclass", "binary", "multilabel", "regression")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch), so a run resumed
    mid-epoch sees exactly the batches it would have seen."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


Shard = tuple[int, int]  # (rank, number of processes): which share of the data this process takes
WHOLE: Shard = (0, 1)


def batch_indices(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, start: int = 0,
                  shard: Shard = WHOLE, device: Optional[torch.device] = None) -> Iterator[Union[slice, torch.Tensor]]:
    """The samples of each batch this process takes, from batch number `start` on.

    Training (`shuffle`): the seeded epoch order cut into batches of `batch_size` samples (all
    processes together); with several processes the order is first padded to a multiple of their
    number by repeating its first samples (as DistributedSampler does), and each process takes its
    equal, contiguous slice of every batch. The batch count is the same as in one process, so steps,
    schedules and resume positions mean the same. Evaluation: each process takes a contiguous,
    unpadded part of the split, as slices (views, no copy).
    """
    rank, size = shard
    if not shuffle:
        low, high = n * rank // size, n * (rank + 1) // size
        for begin in range(low + start * batch_size, high, batch_size):
            yield slice(begin, min(begin + batch_size, high))
        return
    order = epoch_order(n, seed, epoch)
    if size > 1 and n % size:
        order = torch.cat([order, order[: size - n % size]])
    if device is not None:
        order = order.to(device)
    for begin in range(start * batch_size, n, batch_size):
        batch = order[begin:begin + batch_size]
        if size == 1:
            yield batch
        else:
            share = len(batch) // size
            yield batch[rank * share:(rank + 1) * share]


class Split(Protocol):
    """What the engine, the evaluator and k-shot selection need from a split."""

    y: torch.Tensor

    def __len__(self) -> int: ...
    @property
    def sample_shape(self) -> tuple[int, ...]: ...
    def subset(self, index: torch.Tensor) -> "Split": ...
    def num_batches(self, batch_size: int) -> int: ...
    def batches(self, batch_size: int, device: torch.device, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, start: int = 0, shard: Shard = WHOLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorSplit:
    """One split held as tensors `x` (N, ...) and `y` (N, ...)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise DataError(f"x has {len(x)} samples but y has {len(y)}")
        self.x, self.y = x, y
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.x[index], self.y[index])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def tensors_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The split moved to `device` once and kept there."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self.x.to(device), self.y.to(device))
        return self._on_device[key]

    def batches(
        self, batch_size: int, device: torch.device, *, shuffle: bool = False, seed: int = 0,
        epoch: int = 0, start: int = 0, shard: Shard = WHOLE,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of the batches of the epoch, from batch number `start` on (see `batch_indices`)."""
        x, y = self.tensors_on(device)
        for index in batch_indices(len(self), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, start=start,
                                   shard=shard, device=device):
            if isinstance(index, slice):
                yield x[index], y[index]
            else:
                yield x.index_select(0, index), y.index_select(0, index)


@dataclass
class DataBundle:
    """What a dataset builder returns: the splits and what the model and metrics need to know.

    `fitted` holds params the builder derived from the data (the class order, normalization
    statistics); they are written into the run's config, so that evaluating the run later
    maps labels and normalizes inputs exactly as training did.
    """

    splits: dict[str, Split]
    task: str
    num_outputs: int
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.splits:
            raise DataError("the data has no split")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.splits.values())).sample_shape)

    @property
    def is_classification(self) -> bool:
        return self.task in ("multiclass", "binary")

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"the data has no '{name}' split (it has: {', '.join(self.splits)})")
        return self.splits[name]

    def class_counts(self, split: str | None = None) -> list[int] | None:
        """Samples per class of `split` (default: train, else the first split there is)."""
        if self.task != "multiclass":
            return None
        split = split or ("train" if "train" in self.splits else next(iter(self.splits)))
        return torch.bincount(self.split(split).y, minlength=self.num_outputs).tolist()
