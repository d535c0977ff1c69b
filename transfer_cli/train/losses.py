"""Loss functions. Each builder checks that it fits the task of the data."""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from pydantic import Field
from torch import nn

from transfer_cli.core.errors import ConfigError
from transfer_cli.core.registry import Params, Registry

LOSSES: Registry = Registry("loss")


class CrossEntropyParams(Params):
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Optional[Union[Literal["balanced"], list[float]]] = Field(
        None, description="a weight per class, or 'balanced' (inverse class frequency in train)")


class BCEParams(Params):
    pos_weight: Optional[list[float]] = None


def _require_task(loss: str, task: str, allowed: tuple[str, ...], suggestion: str) -> None:
    if task not in allowed:
        raise ConfigError([f"loss.name: '{loss}' needs a {' or '.join(allowed)} task, but the data is "
                           f"{task}; use {suggestion}"])


@LOSSES.register("cross_entropy", params=CrossEntropyParams)
def cross_entropy(params: CrossEntropyParams, *, task: str, num_outputs: int,
                  class_counts: Optional[list[int]] = None) -> nn.Module:
    """Cross-entropy over classes, with label smoothing and class weights."""
    _require_task("cross_entropy", task, ("multiclass",), "loss.name: bce (binary/multilabel) or mse (regression)")
    weight = None
    if params.class_weights == "balanced":
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        weight = counts.sum() / (len(counts) * counts)
    elif params.class_weights is not None:
        if len(params.class_weights) != num_outputs:
            raise ConfigError([f"loss.params.class_weights: expected {num_outputs} weights (one per class), "
                               f"got {len(params.class_weights)}"])
        weight = torch.tensor(params.class_weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=params.label_smoothing)


@LOSSES.register("bce", params=BCEParams)
def bce(params: BCEParams, *, task: str, num_outputs: int, class_counts: Optional[list[int]] = None) -> nn.Module:
    """Binary cross-entropy on logits, for binary and multi-label targets."""
    _require_task("bce", task, ("binary", "multilabel"), "loss.name: cross_entropy (multiclass) or mse (regression)")
    pos_weight = torch.tensor(params.pos_weight) if params.pos_weight else None
    return BCEWithLogits(pos_weight)


@LOSSES.register("mse")
def mse(params: Params, *, task: str, num_outputs: int, class_counts: Optional[list[int]] = None) -> nn.Module:
    """Mean squared error, for regression targets."""
    _require_task("mse", task, ("regression",), "loss.name: cross_entropy (multiclass) or bce (binary/multilabel)")
    return MSE()


class BCEWithLogits(nn.BCEWithLogitsLoss):
    """BCE that accepts (N, 1) logits against (N,) binary targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.reshape(target.shape), target.to(logits.dtype))


class MSE(nn.MSELoss):
    """MSE that accepts (N, 1) outputs against (N,) targets."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(output.reshape(target.shape), target.to(output.dtype))
