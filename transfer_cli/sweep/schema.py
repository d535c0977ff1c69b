"""The sweep file: a base experiment config, a search space over its keys, a method, a budget, an
objective and pruning. Unknown keys are refused everywhere, as in the experiment config, and
errors name the sweep file's line and key path (config.validate renders them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from transfer_cli.config.loader import RawConfig
from transfer_cli.config.schema import Section
from transfer_cli.config.validate import render_errors
from transfer_cli.config.yamlio import read_mapping, read_yaml
from transfer_cli.core.errors import ConfigError

SWEEP_EXAMPLE = "e.g. `base: finetune.yaml`, `space: {optim.lr: {low: 1.0e-4, high: 1.0e-1, log: true}}`"


class Dimension(Section):
    """One swept key: `values` (a choice; what grid walks over) or a range `low`..`high`
    (floats, `log: true` for a log scale; `int: true` for integers)."""

    values: Optional[list[Any]] = Field(None, min_length=1)
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    int: bool = False  # last: in the class body the name then shadows the builtin

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        if self.values is not None:
            if self.low is not None or self.high is not None or self.log or self.int:
                raise ValueError("give either values: [...] or a range (low, high, log, int), not both")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError("each value may appear only once")
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in self.values):
                raise ValueError("values must be plain scalars (numbers, strings, booleans or null)")
            return self
        if self.low is None or self.high is None:
            raise ValueError("expected values: [...] or a range with both low and high, e.g. {low: 1.0e-4, "
                             "high: 1.0e-1, log: true}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.int and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int: true needs whole numbers for low and high")
        return self

    @property
    def kind(self) -> str:
        return "choice" if self.values is not None else "int" if self.int else "float"


class Budget(Section):
    trials: Optional[int] = Field(None, ge=1, description="finished trials (complete, pruned or failed); grid: "
                                                         "default the grid's size")
    minutes: Optional[float] = Field(None, gt=0, description="no new trial starts after this many minutes of "
                                                           "this command")


class Pruning(Section):
    median: bool = Field(False, description="Optuna's median pruner: stop a trial whose objective at an "
                                            "evaluation is worse than the median of earlier trials there")
    warmup_evals: int = Field(1, ge=0, description="evaluations of each trial never pruned")
    startup_trials: int = Field(2, ge=0, description="trials that finish before any is pruned")


class SweepConfig(Section):
    name: Optional[str] = Field(None, min_length=1, description="default: the sweep file's name")
    base: str = Field(..., min_length=1, description="the experiment config, relative to the sweep file")
    stage: Literal["finetune", "pretrain"] = "finetune"
    space: dict[str, Dimension] = Field(..., min_length=1, description="dotted config key -> values or range")
    method: Literal["grid", "random", "tpe"] = "tpe"
    seed: int = Field(0, ge=0, description="of the sampler (each trial trains with the base config's seed)")
    budget: Budget = Field(default_factory=Budget)
    objective: str = Field(..., pattern=r"^val/[A-Za-z0-9_]+$", description="val/<metric>, e.g. val/accuracy")
    direction: Optional[Literal["maximize", "minimize"]] = Field(None, description="default: from the metric")
    pruning: Pruning = Field(default_factory=Pruning)
    share_features: bool = Field(True, description="trials read a frozen backbone's features from the sweep's "
                                                   "own feature cache (transfer.feature_cache_dir)")

    @field_validator("space")
    @classmethod
    def _dotted_keys(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in space:
            if not all(part.strip() for part in key.split(".")):
                raise ValueError(f"'{key}' is not a dotted config key, e.g. optim.lr or data.per_class")
        return space

    @model_validator(mode="after")
    def _method_fits(self) -> "SweepConfig":
        ranges = [key for key, dim in self.space.items() if dim.kind != "choice"]
        if self.method == "grid" and ranges:
            raise ValueError(f"method grid walks over values only, but {', '.join(ranges)} "
                             f"{'is a range' if len(ranges) == 1 else 'are ranges'}; give values: [...] or use "
                             f"method random or tpe")
        if self.method != "grid" and self.budget.trials is None and self.budget.minutes is None:
            raise ValueError(f"method {self.method} needs a budget: budget: {{trials: N}} and/or {{minutes: M}}")
        return self

    def grid_size(self) -> int:
        return math.prod(len(dim.values or ()) for dim in self.space.values())


@dataclass
class Sweep:
    """A validated sweep file with where it was read from."""

    config: SweepConfig
    path: Path
    raw: RawConfig  # the file's data with the line of every key

    @property
    def base(self) -> Path:
        return self.path.parent / self.config.base

    @property
    def name(self) -> str:
        return self.config.name or self.path.stem

    def origin(self, *keypath: str) -> str:
        return self.raw.origin_of(keypath)

    def trial_budget(self) -> Optional[int]:
        trials = self.config.budget.trials
        if self.config.method == "grid":
            return min(trials or self.config.grid_size(), self.config.grid_size())
        return trials


def _dimension_problems(space: Any, raw: RawConfig) -> dict[str, str]:
    """{space.KEY: problem} of each space entry on its own, so that an unknown key in one is
    answered with the keys a dimension has."""
    problems: dict[str, str] = {}
    for key, entry in (space.items() if isinstance(space, dict) else ()):
        try:
            Dimension.model_validate(entry)
        except ValidationError as exc:
            for line in render_errors(exc, Dimension, ("space", key), raw):
                problems.setdefault(f"space.{key}", line)
    return problems


def read_sweep(path: Path) -> Sweep:
    """The sweep file, validated; every problem in one ConfigError (exit 2)."""
    data, lines = read_mapping(path, hint=f"a sweep file is a mapping of keys, {SWEEP_EXAMPLE}")
    raw = RawConfig(data, {key: f"{path}:{line}" for key, line in lines.items()}, str(path))
    # a space key is one dotted name: its line is where the key itself was written
    dimensions = _dimension_problems(data.get("space"), raw)
    problems = list(dimensions.values())
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:  # those of the entries reported above only once
        problems += [p for p in render_errors(exc, SweepConfig, (), raw) if not any(f" {k}" in p for k in dimensions)]
    if problems:
        raise ConfigError(problems, header=f"invalid sweep {path}")
    sweep = Sweep(config, path, raw)
    if not sweep.base.is_file():
        raise ConfigError([f"{sweep.origin('base')}: base: config file not found: {sweep.base} (relative to "
                           f"the sweep file's folder {path.parent})"], header=f"invalid sweep {path}")
    return sweep


def is_sweep_file(path: Path) -> bool:
    """Whether a YAML file is a sweep file (a mapping with `base` and `space`), for `transfer validate`."""
    if not path.is_file():
        return False
    data, _lines = read_yaml(path)
    return isinstance(data, dict) and "base" in data and "space" in data
