"""Optimizers and their parameter groups.

Biases and normalization weights (every parameter with fewer than 2 dimensions) get no weight
decay. A per-parameter LR scale (backbone multiplier, layer-wise decay) splits the groups
further. Each group keeps its `base_lr`; the schedule sets `lr = base_lr * factor(step)`.
"""

from __future__ import annotations

from typing import Annotated, Callable, Optional

import torch
from pydantic import Field
from torch import nn

from transfer_cli.core.registry import Params, Registry

OPTIMIZERS: Registry = Registry("optimizer")

LrScale = Callable[[str], float]


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_scale: Optional[LrScale] = None,
                 include: Optional[Callable[[str], bool]] = None) -> list[dict]:
    """Parameters grouped by (decayed or not, LR scale), in a stable order: those that train
    at some point (`include`; default: requires_grad now)."""
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not (include(name) if include else param.requires_grad):
            continue
        decay = param.ndim >= 2 and weight_decay > 0
        scale = lr_scale(name) if lr_scale else 1.0
        group = groups.setdefault((decay, scale), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "base_lr": lr * scale, "lr": lr * scale,
        })
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def lr_scales(group_names: list[str], backbone_lr_mult: float = 1.0, layer_decay: Optional[float] = None) -> LrScale:
    """Per-parameter LR scale: `backbone_lr_mult` for everything but the head, times
    `layer_decay ** depth`, depth counted in layer groups from the head (head 0, the group
    below it 1, ...). Parameters outside every group count as the input-most group."""
    depth_of = {name: len(group_names) - 1 - i for i, name in enumerate(group_names)}
    deepest = len(group_names) - 1

    def scale(param_name: str) -> float:
        in_head = param_name.startswith("head.")
        depth = next((d for g, d in depth_of.items() if param_name.startswith(g + ".")), deepest)
        value = 1.0 if in_head else backbone_lr_mult
        if layer_decay is not None:
            value *= layer_decay ** depth
        return value

    return scale


class SGDParams(Params):
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    dampening: float = Field(0.0, ge=0)


class AdamParams(Params):
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    amsgrad: bool = False


class RMSpropParams(Params):
    alpha: float = Field(0.99, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0)
    centered: bool = False


@OPTIMIZERS.register("sgd", params=SGDParams)
def build_sgd(params: SGDParams, *, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (optionally Nesterov)."""
    return torch.optim.SGD(groups, lr=lr, momentum=params.momentum, nesterov=params.nesterov,
                           dampening=params.dampening)


@OPTIMIZERS.register("adam", params=AdamParams)
def build_adam(params: AdamParams, *, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, L2 style)."""
    return torch.optim.Adam(groups, lr=lr, betas=params.betas, eps=params.eps, amsgrad=params.amsgrad)


@OPTIMIZERS.register("adamw", params=AdamParams)
def build_adamw(params: AdamParams, *, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=lr, betas=params.betas, eps=params.eps, amsgrad=params.amsgrad)


@OPTIMIZERS.register("rmsprop", params=RMSpropParams)
def build_rmsprop(params: RMSpropParams, *, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """RMSprop."""
    return torch.optim.RMSprop(groups, lr=lr, alpha=params.alpha, eps=params.eps,
                               momentum=params.momentum, centered=params.centered)
