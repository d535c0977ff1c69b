"""A split whose samples are produced by DataLoader workers (decoded files), with the interface
and the epoch order of the in-memory `TensorSplit`, so the engine and an exact resume treat both alike.

Sample `i` of the split is `reader(i, aug_seed)`; `aug_seed` is None when evaluating and, in a
training pass (`shuffle=True`), a pure function of (seed, epoch, i): the random augmentation of
every sample is the same whatever the worker count and wherever a run was resumed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from transfer_cli.core.errors import DataError
from transfer_cli.data.bundle import WHOLE, Shard, batch_indices


class ReadFailure(NamedTuple):
    """Returned by a reader instead of raising, so that the main process can name the file in one
    clear line (an exception raised in a worker arrives wrapped in a traceback)."""

    item: str
    reason: str


Reader = Callable[[int, Optional[int]], Any]  # (sample id, augmentation seed or None) -> tensor or ReadFailure


def augmentation_seed(seed: int, epoch: int, sample: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + sample) % (1 << 62)


class _Samples(Dataset):
    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def __getitem__(self, key: tuple[int, Optional[int]]) -> Any:
        return self.reader(*key)


class _Plan(Sampler):
    """The batches of the current pass; set before each pass (persistent workers re-read it)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, Optional[int]]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, Optional[int]]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list[Any]) -> Any:
    for item in items:
        if isinstance(item, ReadFailure):
            return item
    return default_collate(items)  # in a worker it stacks straight into shared memory: no copy to send it


class DatasetSplit:
    """`ids[k]` is the reader's sample id of the split's k-th sample; `y[k]` its target."""

    def __init__(self, reader: Reader, ids: torch.Tensor, y: torch.Tensor, sample_shape: tuple[int, ...],
                 workers: int, augmented: bool = False) -> None:
        if len(ids) != len(y):
            raise DataError(f"{len(ids)} samples but {len(y)} targets")
        self.reader, self.ids, self.y, self.workers = reader, ids, y, workers
        self.augmented = augmented  # training batches differ every epoch: features cannot be cached
        self._shape = tuple(sample_shape)
        self._loaders: dict[tuple[int, bool], tuple[DataLoader, _Plan]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def subset(self, index: torch.Tensor) -> "DatasetSplit":
        return DatasetSplit(self.reader, self.ids[index], self.y[index], self._shape, self.workers, self.augmented)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, batch_size: int, device: torch.device, *, shuffle: bool = False, seed: int = 0,
        epoch: int = 0, start: int = 0, shard: Shard = WHOLE,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of the batches of the epoch from batch number `start` on (see
        `bundle.batch_indices`); `shuffle` marks a training pass (shuffled, augmented), as in the engine."""
        everything = torch.arange(len(self))
        targets = [everything[index] for index in batch_indices(len(self), batch_size, shuffle=shuffle, seed=seed,
                                                                 epoch=epoch, start=start, shard=shard)]
        loader, plan = self._loader(batch_size, device.type == "cuda")
        plan.batches = [[(int(self.ids[k]), augmentation_seed(seed, epoch, int(self.ids[k])) if shuffle else None)
                         for k in index] for index in targets]
        non_blocking = device.type == "cuda"
        for index, x in zip(targets, loader):
            if isinstance(x, ReadFailure):
                raise DataError(f"cannot read {x.item}: {x.reason}")
            yield x.to(device, non_blocking=non_blocking), self.y[index].to(device, non_blocking=non_blocking)

    def _loader(self, batch_size: int, pin: bool) -> tuple[DataLoader, _Plan]:
        """One loader per batch size, its workers kept alive across epochs and evaluations."""
        key = (batch_size, pin)
        if key not in self._loaders:
            plan = _Plan()
            loader = DataLoader(_Samples(self.reader), batch_sampler=plan, num_workers=self.workers,
                                collate_fn=_collate, pin_memory=pin, persistent_workers=self.workers > 0)
            self._loaders[key] = (loader, plan)
        return self._loaders[key]
