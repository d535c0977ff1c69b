"""Learning-rate schedules as pure functions of the optimizer step: step -> LR factor.

Every schedule gets a linear warmup of `warmup_steps` first and then runs over the steps
that remain. The engine assigns `lr = base_lr * factor(step)`; nothing else holds state, so a
resumed run gets exactly the same learning rates.
"""

from __future__ import annotations

import math
from typing import Callable

from pydantic import Field

from transfer_cli.core.registry import Params, Registry

SCHEDULES: Registry = Registry("schedule")

Schedule = Callable[[int], float]


def with_warmup(shape: Callable[[float], float], warmup_steps: int, total_steps: int) -> Schedule:
    """Linear warmup to 1, then `shape(progress)` with progress going from 0 to 1."""
    span = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return shape(min((step - warmup_steps) / span, 1.0))

    return factor


class StepParams(Params):
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="fractions of the post-warmup steps where LR is multiplied by gamma")
    gamma: float = Field(0.1, gt=0)


class CosineParams(Params):
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class LinearParams(Params):
    end_ratio: float = Field(0.0, ge=0, le=1)


class OneCycleParams(Params):
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, ge=1)
    final_div_factor: float = Field(1e4, ge=1)


@SCHEDULES.register("constant")
def constant(params: Params, *, warmup_steps: int, total_steps: int) -> Schedule:
    """Constant LR (after warmup)."""
    return with_warmup(lambda p: 1.0, warmup_steps, total_steps)


@SCHEDULES.register("step", params=StepParams)
def step(params: StepParams, *, warmup_steps: int, total_steps: int) -> Schedule:
    """LR times gamma at each milestone (fractions of training)."""
    return with_warmup(lambda p: params.gamma ** sum(p >= m for m in params.milestones), warmup_steps, total_steps)


@SCHEDULES.register("cosine", params=CosineParams)
def cosine(params: CosineParams, *, warmup_steps: int, total_steps: int) -> Schedule:
    """Cosine decay from 1 to min_lr_ratio."""
    low = params.min_lr_ratio
    return with_warmup(lambda p: low + (1 - low) * 0.5 * (1 + math.cos(math.pi * p)), warmup_steps, total_steps)


@SCHEDULES.register("linear", params=LinearParams)
def linear(params: LinearParams, *, warmup_steps: int, total_steps: int) -> Schedule:
    """Linear decay from 1 to end_ratio."""
    return with_warmup(lambda p: 1 + (params.end_ratio - 1) * p, warmup_steps, total_steps)


@SCHEDULES.register("onecycle", params=OneCycleParams)
def onecycle(params: OneCycleParams, *, warmup_steps: int, total_steps: int) -> Schedule:
    """One-cycle: cosine up from 1/div_factor to 1, then down to 1/(div_factor*final_div_factor)."""
    start = 1 / params.div_factor
    end = start / params.final_div_factor

    def shape(p: float) -> float:
        if p < params.pct_start:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * p / params.pct_start))
        q = (p - params.pct_start) / (1 - params.pct_start)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * q))

    return with_warmup(shape, warmup_steps, total_steps)
