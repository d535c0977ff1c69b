"""Precise BatchNorm: the running statistics recomputed for the weights as they are now.

A BatchNorm's running mean and variance are an exponential average (momentum 0.1: about the last
ten batches) of statistics taken while the weights moved. In a short run at a high learning rate
the weights move far within those ten batches, and in eval mode the model normalises with
statistics of weights it no longer has: it can predict one class for every sample although its
weights are fine. Before an evaluation this module resets the statistics of every BatchNorm that
trains in the current phase and recomputes them as a cumulative (equal-weight) average over a
fixed, seeded subset of training batches, with the weights fixed, no gradient, the rest of the
model in eval mode (no dropout) and the training samples read without augmentation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from transfer_cli.data.bundle import Split
from transfer_cli.dist import distributed
from transfer_cli.eval.evaluation import autocast
from transfer_cli.train.strategies import BN_TYPES

# `auto` turns precise BN on for runs of at most this many optimizer steps (README: "Precise BatchNorm")
AUTO_MAX_STEPS = 500
AUTO_BATCHES = 50
# a distinct stream of the run's seed: the subset does not repeat the first epoch's order
_SUBSET_SEED_OFFSET = 7_919


def training_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms that update their statistics when the model trains now (frozen ones, which
    `bn: eval|frozen` or a frozen phase keep in eval mode, are not among them)."""
    was_training = model.training
    model.train()  # a TransferModel puts its fixed (frozen) submodules back in eval mode
    norms = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.training and m.track_running_stats]
    model.train(was_training)
    return norms


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) and m.track_running_stats for m in model.modules())


def resolve_batches(setting: Optional[int | str], model: nn.Module, total_steps: int) -> int:
    """`train.precise_bn` as a number of batches: `auto` is AUTO_BATCHES for a model with BatchNorm
    in a run of at most AUTO_MAX_STEPS steps, else 0 (off); a number is taken as it is."""
    if setting == "auto":
        return AUTO_BATCHES if has_batchnorm(model) and total_steps <= AUTO_MAX_STEPS else 0
    return int(setting or 0)


class PreciseBN:
    """Recomputes the statistics over the same `num_batches` training batches each time."""

    def __init__(self, train: Split, num_batches: int, batch_size: int, seed: int) -> None:
        self.source, self.batch_size = train, batch_size
        wanted = min(num_batches * batch_size, len(train))
        # a fixed subset in a seeded random order: batches read in order are then mixed like the
        # shuffled training batches (a split stored class by class would otherwise give one-class
        # batches and miss the variance between classes), and its own loader never disturbs the
        # training pass's
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + _SUBSET_SEED_OFFSET))
        self.split = train.subset(order[:wanted])
        self.num_batches = min(num_batches, self._batches_on_every_rank())

    def _batches_on_every_rank(self) -> int:
        """Unshuffled batches give ranks unequal parts: all ranks run as many forwards as the smallest
        part has (FSDP gathers parameters in every forward, on every rank)."""
        n, size = len(self.split), distributed.world().size
        return min(-(-(n * (r + 1) // size - n * r // size) // self.batch_size) for r in range(size))

    @torch.no_grad()
    def __call__(self, model: nn.Module, norms: list[nn.Module], device: torch.device, precision: str = "fp32") -> None:
        """Recompute the statistics of `norms` (BatchNorms inside `model`) in place; the model's
        modes are restored afterwards."""
        if not norms or self.num_batches == 0:
            return
        was_training = model.training
        momenta = [m.momentum for m in norms]
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # None: a cumulative average over the batches seen since the reset
            m.train()
        try:
            batches = self.split.batches(self.batch_size, device, shard=distributed.world().shard)
            for _, (x, _y) in zip(range(self.num_batches), batches):
                with autocast(device, precision):
                    model(x)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            model.train(was_training)
        _agree_across_ranks(norms)


def _agree_across_ranks(norms: list[nn.Module]) -> None:
    """Under torchrun: the ranks' statistics averaged (their parts are random draws of the same
    subset, as each rank's batches are of one process's: the mean of the batch variances, as in one
    process, not the variance of the whole)."""
    size = distributed.world().size
    if size == 1:
        return
    for m in norms:
        mean, var = m.running_mean, m.running_var
        stacked = torch.stack([mean.double(), var.double()])
        distributed.all_sum(stacked)
        stacked /= size
        mean.copy_(stacked[0])
        var.copy_(stacked[1])
