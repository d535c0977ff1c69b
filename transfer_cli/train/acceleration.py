"""What the training step calls, built from the `train` switches: the model in channels_last
memory format (image models), compiled by torch.compile (falling back to eager with a warning
where compiling fails), wrapped in DDP under torchrun.

Only the training step goes through it; evaluation and checkpoints use the plain model, so
state dict keys never gain `module.` or `_orig_mod.` prefixes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
from torch import nn

from transfer_cli.core.errors import ConfigError
from transfer_cli.dist import distributed

Warn = Callable[[str], None]


def check_channels_last(enabled: bool, input_shape: tuple[int, ...]) -> None:
    """channels_last is a memory layout of 4-D (N, C, H, W) batches: refuse it for other data."""
    if enabled and len(input_shape) != 3:
        raise ConfigError([f"train.channels_last: true applies to image models (samples of shape (C, H, W)); "
                           f"the data has samples of shape {tuple(input_shape)}; remove it"])


def to_channels_last(model: nn.Module) -> None:
    """Weights of 4-D (conv) layers in channels_last layout; convs then run NHWC kernels."""
    model.to(memory_format=torch.channels_last)


class StepModule:
    """`step_module(x)` is the training forward; `no_sync(accumulating)` skips DDP's gradient
    exchange on micro-batches that do not complete a step."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                 channels_last: bool) -> None:
        self.module, self.forward, self.channels_last = module, forward, channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward(x)

    def no_sync(self, accumulating: bool) -> contextlib.AbstractContextManager:
        return distributed.no_sync(self.module, accumulating)


class CompiledForward:
    """torch.compile'd forward that falls back to the eager module, with one warning, when
    compiling fails (no C++ compiler, an unsupported platform or Python, an op dynamo cannot
    trace). Compilation happens lazily on a call, so every call is guarded: a failure raises
    before any output exists, and the eager module then runs the same batch."""

    def __init__(self, module: nn.Module, warn: Warn) -> None:
        self.module, self.warn = module, warn
        self.compiled: Optional[Callable[..., Any]] = None
        try:
            self.compiled = torch.compile(module)
        except Exception as exc:  # noqa: BLE001  e.g. "not supported on this Python version"
            self._fall_back(exc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.module(x)
        try:
            return self.compiled(x)
        except Exception as exc:  # noqa: BLE001
            output = self.module(x)  # a fault of the model itself raises here again, as it would uncompiled
            self._fall_back(exc)
            return output

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        self.warn(f"train.compile: torch.compile could not compile the model ({type(exc).__name__}: {first_line}); "
                  f"training continues uncompiled (set train.compile: false to skip the attempt)")


class StepModuleBuilder:
    """Builds the step module at the start of fit and again when the trainable set changes
    (DDP registers its gradient hooks for the parameters that train when it is built). In one
    process the module does not depend on the trainable set, so the first one is kept."""

    def __init__(self, model: nn.Module, device: torch.device, *, compile: bool, channels_last: bool,
                 distributed_mode: str, warn: Warn) -> None:
        self.model, self.device, self.warn = model, device, warn
        self.compile, self.channels_last, self.mode = compile, channels_last, distributed_mode
        self._built: Optional[StepModule] = None
        self._compile_failed = False

    def __call__(self) -> StepModule:
        if self._built is not None and not distributed.world().is_distributed:
            return self._built
        module = distributed.wrap(self.model, self.device, self.mode)
        forward: Callable[[torch.Tensor], torch.Tensor] = module
        if self.compile and not self._compile_failed:
            forward = CompiledForward(module, self._warn_once)
        self._built = StepModule(module, forward, self.channels_last)
        return self._built

    def _warn_once(self, message: str) -> None:
        self._compile_failed = True
        self.warn(message)
