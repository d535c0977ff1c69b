"""The search space against the base config: each trial's config is the base config with the
trial's values on top, loaded by the normal loader (config.resolve), so a swept key that does not
exist, or a value it does not take, is the same one-line error as in a config file, pointing at
the sweep file's line. Also: the objective's direction, from the metric registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from transfer_cli.config.loader import RawConfig, load_raw
from transfer_cli.config.resolve import key_layer, load_experiment
from transfer_cli.config.schema import Experiment
from transfer_cli.core.errors import ConfigError
from transfer_cli.core.registry import did_you_mean
from transfer_cli.recipes.components import registries
from transfer_cli.sweep.schema import Dimension, Sweep


def keypath(key: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in key.split("."))


def trial_layers(sweep: Sweep, values: dict[str, Any], cache_dir: Optional[Path] = None) -> list[RawConfig]:
    """One config layer per swept key (its origin: the sweep file's line) and the shared feature cache,
    over the objective as the monitor (when the base names none)."""
    layers = [key_layer(("train",) + keypath(key), value, f"{sweep.origin('objective')} (the sweep's objective)")
              for key, value in objective_monitor(sweep).items()]
    layers += [key_layer(keypath(key), value, f"{sweep.origin('space', key)} (space.{key} = {json.dumps(value)})")
               for key, value in values.items()]
    if cache_dir is not None:
        layers.append(key_layer(("transfer", "feature_cache_dir"), str(cache_dir.absolute()),
                                "the sweep's shared feature cache"))
    return layers


def objective_monitor(sweep: Sweep) -> dict[str, str]:
    """{monitor, monitor_mode} of train for a base config that names no train.monitor: the
    objective, so that a trial's best weights (its value) are the best by the objective, not by
    the default monitor (val/accuracy for a sweep of val/loss)."""
    train = load_raw(sweep.base).data.get("train")
    if isinstance(train, dict) and train.get("monitor") is not None:
        return {}
    mode = {"maximize": "max", "minimize": "min"}.get(sweep.config.direction or "", "auto")
    return {"monitor": sweep.config.objective, "monitor_mode": mode}


def trial_experiment(sweep: Sweep, values: dict[str, Any], cache_dir: Optional[Path] = None) -> Experiment:
    """The trial's config through the normal loader (ConfigError when it is not valid)."""
    exp = load_experiment(sweep.base, sweep.config.stage, [], registries(), layers=trial_layers(sweep, values, cache_dir))
    if exp.transfer.seeds or exp.transfer.baseline != "none":
        key = "seeds" if exp.transfer.seeds else "baseline"
        raise ConfigError([f"{sweep.base}: transfer.{key}: a sweep trial is one run; remove transfer.{key} from the "
                           f"base config (repeat the best config over seeds afterwards with "
                           f"`transfer finetune best.yaml --seeds 0,1,2`)"], header=f"invalid sweep {sweep.path}")
    return exp


def check_sweep(sweep: Sweep) -> str:
    """Before any trial: the objective, the base config alone, then each swept value on it (a
    range: its ends). Every problem in one ConfigError; else the objective's direction."""
    problems: list[str] = []
    goal = ""
    try:
        goal = direction(sweep)
    except ConfigError as exc:
        problems += exc.problems
    base = trial_experiment(sweep, {})  # the base itself; its errors are the base file's own
    problems += _objective_not_listed(sweep, base)
    for key, dim in sweep.config.space.items():
        for value in candidates(dim):
            try:
                trial_experiment(sweep, {key: value})
            except ConfigError as exc:
                problems += [p for p in exc.problems if p not in problems]
                break  # one value's problem is enough for this key (an unknown key fails every value)
    if problems:
        raise ConfigError(problems, header=f"invalid sweep {sweep.path}")
    return goal


def _objective_not_listed(sweep: Sweep, base: Experiment) -> list[str]:
    """The objective's metric against the base's own eval.metrics, when it lists them (the task's
    defaults are known only once the data is built: a trial then stops at its first evaluation)."""
    metric = sweep.config.objective.split("/", 1)[1]
    listed = base.eval.metrics
    if not listed or metric == "loss" or metric in listed:
        return []
    return [f"{sweep.origin('objective')}: objective: {sweep.config.objective} is not computed: the base config's "
            f"eval.metrics are {', '.join(listed)}; add {metric} to them, or choose val/loss or one of them"]


def candidates(dim: Dimension) -> list[Any]:
    if dim.values is not None:
        return list(dim.values)
    if dim.int:
        return [int(dim.low), int(dim.high)]
    return [dim.low, dim.high]


def distributions(sweep: Sweep) -> dict[str, Any]:
    """Optuna's distribution of every swept key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in sweep.config.space.items():
        if dim.values is not None:
            out[key] = CategoricalDistribution(dim.values)
        elif dim.int:
            out[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


def direction(sweep: Sweep) -> str:
    """maximize or minimize: given, or from the metric registry (loss: minimize)."""
    if sweep.config.direction:
        return sweep.config.direction
    metric = sweep.config.objective.split("/", 1)[1]
    if metric == "loss":
        return "minimize"
    from transfer_cli.eval.metrics import METRICS, MetricContext

    if metric not in METRICS:
        raise ConfigError([f"{sweep.origin('objective')}: objective: unknown metric '{metric}'"
                           f"{did_you_mean(metric, METRICS.names())}; known: loss, {', '.join(METRICS.names())}"],
                          header=f"invalid sweep {sweep.path}")
    for task, outputs in (("multiclass", 5), ("binary", 1), ("regression", 1), ("multilabel", 3)):
        try:  # the metric's direction does not depend on the task; build it for one it applies to
            return "maximize" if METRICS.build(metric, context=MetricContext(task, outputs)).higher_is_better \
                else "minimize"
        except ConfigError:
            continue
    raise ConfigError([f"{sweep.origin('objective')}: objective: cannot tell whether {metric} is better higher "
                       f"or lower; give direction: maximize or minimize"], header=f"invalid sweep {sweep.path}")
