"""Frozen parameters kept in bfloat16 (`train.frozen_dtype: bf16`): half the memory of the part
of the model that never trains (a linear probe's backbone, LoRA's base weights, freeze globs).

A layer (a module whose children hold no parameters) whose own parameters all stay frozen (LoRA's
adapters aside) computes in bfloat16: its inputs
are cast to bf16 on the way in and its outputs back to float32 on the way out, so the rest of
the model, the trainable parameters (LoRA adapters on the same layer included) and their
gradients stay float32. BatchNorm layers are left in float32 (their running statistics would
lose precision). Checkpoints hold float32 weights as always, so every later stage loads them
unchanged; `to_float32` turns the model back before the final evaluation, which then computes
exactly what `transfer evaluate` of the run computes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from transfer_cli.models.lora import LORA_PARAMS

_HOOKS = "_frozen_dtype_hooks"


def keep_frozen_in_bf16(model: nn.Module, trains: Callable[[str], bool]) -> int:
    """Cast every parameter that never trains (`trains(name)` false) of the layers that can
    compute in bf16; returns the bytes saved."""
    saved = 0
    for prefix, module in model.named_modules():
        # a layer: no child holds parameters (LoRA's dropout is a child without any)
        if any(True for c in module.children() for _ in c.parameters()) or \
                isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        # the layer's own weights (LoRA's adapters, float32, are applied by their hook): all frozen, or
        # the layer stays float32, since it computes in one dtype (a frozen bias with a trained weight)
        own = [(name, p) for name, p in module.named_parameters(recurse=False)
               if p.is_floating_point() and name not in LORA_PARAMS]
        if not own or any(trains(f"{prefix}.{name}".lstrip(".")) for name, _ in own):
            continue
        frozen = [p for _, p in own if p.dtype != torch.bfloat16]
        if not frozen:
            continue
        for param in frozen:
            saved += param.numel() * (param.element_size() - 2)
            param.data = param.data.to(torch.bfloat16)
        setattr(module, _HOOKS, [module.register_forward_pre_hook(_inputs_to_bf16),
                                 module.register_forward_hook(_outputs_to_float32)])
    return saved


def to_float32(model: nn.Module) -> None:
    """Undo keep_frozen_in_bf16: every parameter float32 again (the bf16-rounded values), plain layers."""
    for module in model.modules():
        hooks = module.__dict__.pop(_HOOKS, None)
        if hooks is None:
            continue
        for hook in hooks:
            hook.remove()
        for param in module.parameters(recurse=False):
            if param.dtype == torch.bfloat16:
                param.data = param.data.float()


def _inputs_to_bf16(module: nn.Module, args: tuple) -> tuple:
    return tuple(_cast(a, torch.bfloat16) for a in args)


def _outputs_to_float32(module: nn.Module, args: tuple, output: Any) -> Any:
    if isinstance(output, tuple):
        return tuple(_cast(o, torch.float32) for o in output)
    return _cast(output, torch.float32)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value
