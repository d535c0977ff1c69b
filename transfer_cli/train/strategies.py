"""Transfer strategies as a plan of phases: which parameters train, from which step, with
which warmup. Pure functions of the config and the model's layer groups, so that a resumed run
recomputes the same phase for the same step.

    full          everything trains
    linear_probe  only the head trains (the backbone is frozen: weights, statistics, dropout)
    lp_ft         probe_epochs of linear probe, then everything (each phase has its own warmup)
    gradual       ULMFiT-style: the head first, one more layer group every unfreeze_every epochs
    lora          LoRA adapters and the head train; the adapted weights are merged at the end

`transfer.freeze` globs are frozen on top of any strategy; `bn: frozen` freezes the affine
parameters of every normalization layer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from transfer_cli.config.schema import TransferConfig
from transfer_cli.core.errors import ConfigError
from transfer_cli.models.base import TransferModel
from transfer_cli.train.schedules import Schedule

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Phase:
    name: str
    start: int
    end: int
    trainable: frozenset[str]
    schedule: Schedule = field(default=lambda step: 1.0, repr=False)

    @property
    def head_only(self) -> bool:
        return all(name.startswith("head.") for name in self.trainable)


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_norm(module: nn.Module) -> bool:
    """torch's normalization layers, and those models define themselves (Llama's RMSNorm, ...),
    told by their class name since they subclass nn.Module directly."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("LayerNorm", "RMSNorm", "GroupNorm"))


def norm_parameter_names(model: nn.Module) -> set[str]:
    return {f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in model.named_modules() if is_norm(module)
            for param_name, _ in module.named_parameters(recurse=False)}


def trainable_in(model: TransferModel, groups: list[str], cfg: TransferConfig, extra: set[str] = frozenset()) -> frozenset[str]:
    """Parameter names under the given layer groups (plus `extra`), minus freeze globs and,
    with bn: frozen, minus normalization parameters."""
    always_frozen = norm_parameter_names(model) if cfg.bn == "frozen" else set()
    names = set()
    for name, _ in model.named_parameters():
        in_groups = any(name == g or name.startswith(g + ".") for g in groups) or name in extra
        if in_groups and not matches(name, cfg.freeze) and name not in always_frozen:
            names.add(name)
    return frozenset(names)


def build_plan(model: TransferModel, cfg: TransferConfig, steps_per_epoch: int, total_steps: int,
               make_schedule: Callable[[int], Schedule], lora_names: set[str] = frozenset(),
               compress: bool = False) -> list[Phase]:
    """The phases of training for `cfg.strategy` (the scratch baseline uses the default config).
    `compress` (smoke runs): phases start one step apart so that each runs within a tiny budget."""
    check_freeze_patterns(model, cfg.freeze)
    if compress:
        steps_per_epoch = 1
        cfg = cfg.model_copy(update={"probe_epochs": 1, "unfreeze_every": 1})
    everything = ["backbone", "head"]
    if cfg.strategy == "full":
        phases = [("full", 0, everything)]
    elif cfg.strategy == "linear_probe":
        phases = [("probe", 0, ["head"])]
    elif cfg.strategy == "lora":
        phases = [("lora", 0, ["head"])]
    elif cfg.strategy == "lp_ft":
        probe_end = cfg.probe_epochs * steps_per_epoch
        if probe_end >= total_steps:
            raise ConfigError([f"transfer.probe_epochs: {cfg.probe_epochs} epochs of probing ({probe_end} steps) "
                               f"leave nothing for fine-tuning in a budget of {total_steps} steps; lower it or "
                               f"raise train.epochs"])
        phases = [("probe", 0, ["head"]), ("finetune", probe_end, everything)]
    else:  # gradual: the head first, then one more group, from the output back to the input
        groups = model.layer_group_names()
        every = cfg.unfreeze_every * steps_per_epoch
        phases = [(f"unfreeze-{k}", (k - 1) * every, groups[-k:]) for k in range(1, len(groups) + 1)]
        phases = [p for p in phases if p[1] < total_steps]
    ends = [start for _, start, _ in phases[1:]] + [total_steps]
    extra = set(lora_names) if cfg.strategy == "lora" else set()
    plan = []
    for (name, start, groups), end in zip(phases, ends):
        plan.append(Phase(name, start, end, trainable_in(model, groups, cfg, extra), make_schedule(end - start)))
    if not plan[0].trainable:
        raise ConfigError([f"transfer.freeze: nothing is left to train in phase '{plan[0].name}' "
                           f"(freeze patterns {cfg.freeze})"])
    return plan


def check_freeze_patterns(model: nn.Module, patterns: list[str]) -> None:
    """A freeze glob that matches no parameter is a typo, not a no-op."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ConfigError([f"transfer.freeze: {p!r} matches no parameter; parameter names look like "
                           f"{', '.join(names[:3])}, ... (e.g. 'backbone.{names[0].split('.')[1]}.*')"
                           for p in unmatched])


def phase_at(plan: list[Phase], step: int) -> Phase:
    for phase in plan:
        if phase.start <= step < phase.end:
            return phase
    return plan[-1]


def plan_schedule(plan: list[Phase]) -> Schedule:
    """One LR factor function over the whole run; each phase runs its own schedule from its start."""
    def factor(step: int) -> float:
        phase = phase_at(plan, step)
        return phase.schedule(step - phase.start)

    return factor


def apply_phase(model: TransferModel, phase: Phase, bn: str) -> None:
    """Set requires_grad to exactly the phase's trainable set, fix frozen modules in eval mode,
    and check the result (a module that toggles requires_grad itself would be caught here)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in phase.trainable)
    fixed = frozen_subtrees(model)
    if bn in ("eval", "frozen"):
        fixed += [name for name, module in model.named_modules() if isinstance(module, BN_TYPES)
                  and not any(name == f or name.startswith(f + ".") for f in fixed)]
    model.fix_modules(fixed)
    actual = {name for name, param in model.named_parameters() if param.requires_grad}
    if actual != set(phase.trainable):
        raise RuntimeError(f"trainable parameters differ from the plan: {sorted(actual ^ set(phase.trainable))[:5]}")


def frozen_subtrees(model: nn.Module, prefix: str = "") -> list[str]:
    """The largest submodules whose parameters are all frozen (they run in eval mode)."""
    out = []
    for name, child in model.named_children():
        qualified = f"{prefix}{name}"
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(qualified)
        elif params:
            out += frozen_subtrees(child, qualified + ".")
    return out


def trainable_summary(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {"trainable": trainable, "total": total, "share": round(trainable / max(total, 1), 4),
            "tensors": len(names)}


def describe(phase: Phase, model: nn.Module) -> str:
    info = trainable_summary(model)
    return (f"phase {phase.name} (steps {phase.start}-{phase.end}): {info['trainable']:,} of {info['total']:,} "
            f"parameters trainable ({100 * info['share']:.1f}%, {info['tensors']} tensors)")
