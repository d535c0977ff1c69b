"""LoRA (Hu et al. 2021, "Low-Rank Adaptation") on nn.Linear, nn.Conv1d and nn.Conv2d, in plain torch,
and on transformers' `Conv1D` (GPT-2's projections: a linear layer whose weight is stored (in, out)).

An adapted module keeps its own parameters and their names; it gains two parameters `lora_A` and
`lora_B` (plus a stateless `lora_dropout`), and a forward hook adds `scale * B(A(dropout(x)))` to
its output, with scale = alpha / rank. For a conv, A is a conv with the module's kernel, stride,
padding and dilation and B a 1x1 conv, so B·A is a weight of the module's shape and merging is
exact. B starts at zero (A as in the paper's reference code), so an adapted model computes what
the plain one did until the adapters train.

Why not PEFT: this is ~150 lines with no dependency, works on any module tree (ours or a Hugging
Face model), and keeps parameter names unchanged, which freezing globs, layer groups and loading
rely on.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from transfer_cli.core.errors import ConfigError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D, told by its shape (transformers stays an optional import):
    y = x @ W + b with W of shape (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def adaptable(module: nn.Module) -> bool:
    return isinstance(module, ADAPTABLE) or is_transposed_linear(module)
LORA_PARAMS = ("lora_A", "lora_B")


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Add LoRA adapters to every nn.Linear / nn.Conv1d / nn.Conv2d whose qualified module name matches
    a glob in `targets` (the head, i.e. names starting with "head", is never adapted; nor is a grouped
    conv). The adapted modules keep their parameter names (e.g. "backbone.block0.0.weight"); the
    adapters are new parameters whose names contain "lora_".

    Returns the qualified names of the adapted modules; raises ConfigError naming
    transfer.lora.targets when nothing matches (listing a few module names that could).
    """
    candidates = _candidates(model)
    chosen = [(name, module) for name, module in candidates.items()
              if any(fnmatchcase(name, pattern) for pattern in targets)]
    if not chosen:
        raise ConfigError([_nothing_matches(model, targets, list(candidates))])
    for name, module in chosen:
        if is_adapted(module):
            raise ValueError(f"{name} already has LoRA adapters; add_lora was called twice")
        _attach(module, rank, alpha, dropout)
    return [name for name, _ in chosen]


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of the adapter parameters (the only ones add_lora created)."""
    return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] in LORA_PARAMS]


def merged_state_dict(model: nn.Module, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """The plain-architecture state dict: each adapted weight W replaced by W + (alpha/rank) * B·A,
    no lora_ keys, the merged weights in `dtype` (default: the weight's). Does not modify the model."""
    state = model.state_dict()
    with torch.no_grad():
        for name, module in adapted_modules(model):
            prefix = f"{name}." if name else ""
            target = dtype or module.weight.dtype
            state[prefix + "weight"] = state[prefix + "weight"].to(target) + _delta_weight(module, target)
            for param in LORA_PARAMS:
                del state[prefix + param]
    return state


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its module's weight and remove the adapters (in place)."""
    with torch.no_grad():
        for _, module in adapted_modules(model):
            module.weight += _delta_weight(module)
            _detach(module)


def adapted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if is_adapted(module)]


def is_adapted(module: nn.Module) -> bool:
    return adaptable(module) and isinstance(getattr(module, "lora_A", None), nn.Parameter)


# ---- internals -------------------------------------------------------------------------------------
def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Adaptable modules by name: Linear/Conv1d/Conv2d, not in the head, not grouped."""
    return {name: module for name, module in model.named_modules()
            if adaptable(module) and name.split(".")[0] != "head" and getattr(module, "groups", 1) == 1}


def _nothing_matches(model: nn.Module, targets: list[str], candidates: list[str]) -> str:
    if not candidates:
        return ("transfer.lora.targets: the model has no nn.Linear/Conv1d/Conv2d outside the head (grouped convs "
                "are not adapted); use another strategy")
    grouped = [name for name, module in model.named_modules()
               if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1
               and any(fnmatchcase(name, p) for p in targets)]
    note = f" ({', '.join(grouped[:3])} match but are grouped convs, which are not adapted)" if grouped else ""
    shown = ", ".join(candidates[:6]) + (f", ... ({len(candidates)} in all)" if len(candidates) > 6 else "")
    return (f"transfer.lora.targets: {targets} match no nn.Linear/Conv1d/Conv2d module outside the head{note}; "
            f"modules that can be adapted: {shown} (glob patterns, e.g. 'backbone.*' or '*.conv1')")


def _attach(module: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    weight = module.weight
    if isinstance(module, nn.Linear):
        a_shape, b_shape = (rank, module.in_features), (module.out_features, rank)
    elif is_transposed_linear(module):
        a_shape, b_shape = (rank, weight.shape[0]), (weight.shape[1], rank)
    else:
        kernel = tuple(module.kernel_size)
        a_shape, b_shape = (rank, module.in_channels, *kernel), (module.out_channels, rank, *(1,) * len(kernel))
    lora_a = torch.empty(a_shape, device=weight.device, dtype=weight.dtype)
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
    module.register_parameter("lora_A", nn.Parameter(lora_a))
    module.register_parameter("lora_B", nn.Parameter(torch.zeros(b_shape, device=weight.device, dtype=weight.dtype)))
    module.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
    module.lora_scale = alpha / rank
    module.register_forward_hook(_add_lora_output)


def _add_lora_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    # a module-level function reading the module it is given, so that deep copies stay independent
    x = module.lora_dropout(inputs[0]).to(module.lora_A.dtype)  # a bf16 base layer gets bf16 inputs
    if isinstance(module, nn.Linear) or is_transposed_linear(module):
        delta = F.linear(F.linear(x, module.lora_A), module.lora_B)
    else:
        pointwise = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
        # _conv_forward applies the module's stride, padding (and padding_mode), dilation
        delta = pointwise(module._conv_forward(x, module.lora_A, None), module.lora_B)
    return output + module.lora_scale * delta


def _delta_weight(module: nn.Module, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """scale * B·A in the shape of the module's weight, in `dtype` (default: the weight's),
    computed in float32."""
    delta = module.lora_B.flatten(1).float() @ module.lora_A.flatten(1).float()
    if is_transposed_linear(module):
        delta = delta.T  # (out, in) -> the (in, out) layout Conv1D stores
    return (module.lora_scale * delta).view(module.weight.shape).to(dtype or module.weight.dtype)


def _detach(module: nn.Module) -> None:
    for key, hook in list(module._forward_hooks.items()):
        if hook is _add_lora_output:
            del module._forward_hooks[key]
    for name in (*LORA_PARAMS, "lora_dropout", "lora_scale"):
        delattr(module, name)
