"""Activation checkpointing per layer group: a group keeps only its inputs during the forward and
recomputes its activations in the backward (`torch.utils.checkpoint`, non-reentrant).

Non-reentrant, because the reentrant variant gives no gradients when a group's inputs do not
require grad, which is the case behind every frozen prefix (linear probe, LoRA, freeze globs).
The recomputation replays the forward's RNG state (same dropout masks), and BatchNorm's running
statistics, which the recomputation would update a second time, are put back as the forward
left them: the same losses, gradients and evaluations as without checkpointing.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_FLAG = "_activation_checkpointing"


def checkpoint_modules(modules: list[nn.Module]) -> int:
    """Run each module's forward under activation checkpointing while gradients are recorded
    (evaluation and feature extraction run as before). The modules stay where they are, so
    state dict keys do not change. Returns how many modules were (newly) wrapped."""
    wrapped = 0
    for module in modules:
        if not is_checkpointed(module):
            # a bound method: a deep copy of the module is rebound to the copy
            object.__setattr__(module, "forward", types.MethodType(_checkpointed_forward, module))
            object.__setattr__(module, _FLAG, True)
            wrapped += 1
    return wrapped


def is_checkpointed(module: nn.Module) -> bool:
    return bool(getattr(module, _FLAG, False))


def _checkpointed_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    original = type(module).forward.__get__(module)
    if not torch.is_grad_enabled():
        return original(*args, **kwargs)
    calls = []

    def run(*inner_args: Any, **inner_kwargs: Any) -> Any:
        if calls:  # the recomputation in the backward: the forward already updated the statistics
            with running_statistics_kept(module):
                return original(*inner_args, **inner_kwargs)
        calls.append(True)
        return original(*inner_args, **inner_kwargs)

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics (and counters) under `module` put back as they were."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
            for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, saved in zip(norms, kept):
                buffers = [b for b in (norm.running_mean, norm.running_var, norm.num_batches_tracked) if b is not None]
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
