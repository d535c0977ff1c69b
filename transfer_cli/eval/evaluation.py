"""Evaluation of a model over a split: mean loss and the configured metrics, and for the final
report the breakdown (confusion matrix, per-class table, calibration) and the predictions."""

from __future__ import annotations

import copy

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from transfer_cli.data.bundle import TensorSplit
from transfer_cli.dist import distributed
from transfer_cli.eval.breakdown import Breakdown
from transfer_cli.eval.metrics import MetricCollection

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `precision` (fp32: none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


@dataclass
class SplitResult:
    """One split evaluated: scalar metrics, and on request the breakdown and the predictions
    (probabilities or values, on the CPU, in split order) with their targets."""

    metrics: dict[str, float]
    size: int = 0
    breakdown: Optional[dict[str, Any]] = None
    predictions: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None


MetricInputs = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Evaluator:
    def __init__(self, model: nn.Module, loss_fn: nn.Module, metrics: MetricCollection,
                 metric_inputs: MetricInputs, device: torch.device, batch_size: int,
                 precision: str = "fp32", batch_limit: Optional[int] = None,
                 breakdown: Optional[Breakdown] = None) -> None:
        self.model, self.loss_fn, self.metric_inputs, self.device = model, loss_fn, metric_inputs, device
        self.metrics = metrics.to(device)
        self.breakdown = breakdown.to(device) if breakdown is not None else None
        self.batch_size, self.precision, self.batch_limit = batch_size, precision, batch_limit

    def for_model(self, model: nn.Module) -> "Evaluator":
        """The same evaluation (metrics, loss, batching) of another model, e.g. the head alone on
        cached features."""
        other = copy.copy(self)
        other.model = model
        return other

    def __call__(self, split: TensorSplit) -> dict[str, float]:
        """Loss and metrics over `split` (what the engine logs at each evaluation)."""
        return self.run(split).metrics

    @torch.inference_mode()
    def run(self, split: TensorSplit, detailed: bool = False, keep_predictions: bool = False) -> SplitResult:
        """Evaluate `split`; `detailed` adds the breakdown, `keep_predictions` the predictions.
        The model's train/eval mode is restored afterwards. Under torchrun each rank evaluates its
        part of the split and the sums are combined (torchmetrics syncs its states in compute()),
        so every rank gets the result of evaluating the whole split once."""
        was_training = self.model.training
        self.model.eval()
        breakdown = self.breakdown if detailed else None
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        x = None
        for i, (x, y) in enumerate(split.batches(self.batch_size, self.device, shard=distributed.world().shard)):
            if self.batch_limit is not None and i >= self.batch_limit:
                break
            with autocast(self.device, self.precision):
                out = self.model(x).float()
            loss_sum += self.loss_fn(out, y).double() * len(y)
            count += len(y)
            preds, target = self.metric_inputs(out, y)
            self.metrics.update(preds, target)
            if breakdown is not None:
                breakdown.update(preds, target)
            if keep_predictions:
                kept.append((preds.cpu(), target.cpu()))
        for _ in range(self._forwards_to_match(split)):  # FSDP gathers parameters in every forward, on every rank
            self.model(x if x is not None else next(split.batches(1, self.device))[0])
        totals = distributed.all_sum(torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64,
                                                                           device=self.device)]))
        count = int(totals[1].item())
        result = SplitResult({"loss": (totals[0] / max(count, 1)).item()}, size=count)
        result.metrics.update({name: float(value) for name, value in self.metrics.compute().items()})
        self.metrics.reset()
        if breakdown is not None:
            result.breakdown = breakdown.compute()
            breakdown.reset()
        if kept:
            result.predictions, result.targets = torch.cat([p for p, _ in kept]), torch.cat([t for _, t in kept])
        self.model.train(was_training)
        return result

    def _forwards_to_match(self, split: TensorSplit) -> int:
        """Under FSDP every rank must run as many forward passes as the others: how many more
        this rank runs (outputs discarded) to match the one with the largest part of the split."""
        if not distributed.is_sharded(self.model):
            return 0
        rank, size = distributed.world().shard
        n, per_batch = len(split), self.batch_size
        mine = -(-(n * (rank + 1) // size - n * rank // size) // per_batch)
        most = -(-(-(-n // size)) // per_batch)
        if self.batch_limit is not None:
            mine, most = min(mine, self.batch_limit), min(most, self.batch_limit)
        return most - mine
