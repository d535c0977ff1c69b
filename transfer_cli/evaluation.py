"""Evaluation of a model over a split: mean loss and the configured metrics."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torchmetrics
from torch import nn

from transfer_cli.data.bundle import TensorSplit

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `precision` (fp32: none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


class Evaluator:
    def __init__(self, model: nn.Module, loss_fn: nn.Module, metrics: torchmetrics.MetricCollection,
                 predict: Callable[[torch.Tensor], torch.Tensor], device: torch.device, batch_size: int,
                 precision: str = "fp32", batch_limit: Optional[int] = None) -> None:
        self.model, self.loss_fn, self.predict, self.device = model, loss_fn, predict, device
        self.metrics = metrics.to(device)
        self.batch_size, self.precision, self.batch_limit = batch_size, precision, batch_limit

    @torch.inference_mode()
    def __call__(self, split: TensorSplit) -> dict[str, float]:
        """Loss and metrics over `split`; the model's train/eval mode is restored afterwards."""
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        for i, (x, y) in enumerate(split.batches(self.batch_size, self.device)):
            if self.batch_limit is not None and i >= self.batch_limit:
                break
            with autocast(self.device, self.precision):
                out = self.model(x).float()
            loss_sum += self.loss_fn(out, y).double() * len(y)
            count += len(y)
            self.metrics.update(self.predict(out), y)
        result = {"loss": (loss_sum / max(count, 1)).item()}
        result.update({name: float(value) for name, value in self.metrics.compute().items()})
        self.metrics.reset()
        self.model.train(was_training)
        return result
