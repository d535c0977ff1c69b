"""One trial of a sweep: the trial's config through the normal loader, trained by the normal
finetune (or pretrain) recipe into trials/NNN/ (an ordinary run directory), with its objective
reported to the Optuna trial at every evaluation so that the median pruner can stop it."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from transfer_cli.core.console import Console, format_value
from transfer_cli.core.errors import CheckpointError, ConfigError, DataError, Interrupted, RunFailed, one_line
from transfer_cli.recipes.parts import RunOptions
from transfer_cli.runs.rundir import RunDir
from transfer_cli.sweep.schema import Sweep
from transfer_cli.sweep.space import objective_monitor, trial_experiment
from transfer_cli.train.engine import BaseCallback, Engine, TrainState

TRIALS_DIR = "trials"
FEATURES_DIR = "features"


def trial_dir(sweep_dir: Path, number: int) -> Path:
    return sweep_dir / TRIALS_DIR / f"{number:03d}"


class ReportToTrial(BaseCallback):
    """After each evaluation: the objective to the Optuna trial (step = the evaluation's index),
    and with pruning, a stop when the pruner says so. The stop is the engine's own (stop_reason),
    so the pruned trial ends like an early-stopped run: best weights evaluated, report written."""

    def __init__(self, trial: Any, objective: str, prune: bool, reported: set[int]) -> None:
        self.trial, self.objective, self.prune = trial, objective, prune
        self.reported = set(reported)  # steps stored already (a resumed trial reports from where it was)
        self.pruned_at: Optional[int] = None

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        value = record.get(self.objective)
        if value is None:  # not computed (a metric of another task, no val split): every epoch would be waste
            state.stop_reason = f"the sweep's objective {self.objective} is not in this evaluation"
            return
        step = len(state.history) - 1
        if step not in self.reported:
            self.trial.report(float(value), step)
            self.reported.add(step)
        if self.prune and self.trial.should_prune():
            self.pruned_at = step
            state.stop_reason = (f"pruned by the sweep's median pruner: {self.objective} {format_value(value)} at "
                                 f"evaluation {step + 1} is worse than the median of earlier trials there")


@dataclass
class Outcome:
    state: str  # complete, pruned or failed
    value: Optional[float] = None
    run_dir: str = ""
    error: Optional[str] = None
    pruned_at: Optional[int] = None
    fatal: bool = False  # every trial would fail the same way: the sweep stops


def run_trial(sweep: Sweep, sweep_dir: Path, trial: Any, console: Console, smoke: bool = False,
              reported: frozenset[int] = frozenset()) -> Outcome:
    """Train the trial; a fault of this trial alone (a diverged run, a combination of values the
    config refuses) is a failed trial, not a failed sweep. A stop by a signal propagates: the
    trial stays running in the study and `--resume` continues its run directory (`reported`: the
    evaluation steps the study holds already from the try that was stopped)."""
    from transfer_cli.recipes.finetune import finetune
    from transfer_cli.recipes.pretrain import pretrain

    path = trial_dir(sweep_dir, trial.number)
    values = dict(trial.params)
    cache = sweep_dir / FEATURES_DIR if sweep.config.share_features and sweep.config.stage == "finetune" else None
    callback = ReportToTrial(trial, sweep.config.objective, sweep.config.pruning.median, set(reported))
    resume = (path / "run.json").is_file()
    opts = RunOptions(config_path=sweep.base, run_dir=str(path), resume=resume, smoke=smoke, callbacks=(callback,))
    console.info(f"trial {trial.number}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                 + (" (resumed)" if resume else ""))
    try:
        exp = trial_experiment(sweep, values, cache)
        recipe = finetune if sweep.config.stage == "finetune" else pretrain
        report = recipe(exp, opts, console)
    except (Interrupted, KeyboardInterrupt):
        raise
    except (RunFailed, ConfigError, DataError, CheckpointError) as exc:  # e.g. a swept init_from that is not weights
        fatal = _objective_not_logged(sweep, exc)
        if fatal:
            return Outcome("failed", run_dir=str(path), fatal=True, error=fatal)
        console.warn(f"trial {trial.number} failed: {one_line(exc)}")
        return Outcome("failed", run_dir=str(path), error=str(exc))
    return _outcome(sweep, sweep_dir, trial.number, values, report, callback.pruned_at, reported)


def _objective_not_logged(sweep: Sweep, exc: Exception) -> Optional[str]:
    """The sweep's problem, not the trial's, when the objective (the trials' train.monitor) is a
    metric the trials do not log: every trial would fail the same way before training."""
    if not isinstance(exc, ConfigError) or not objective_monitor(sweep):
        return None
    said = next((p for p in exc.problems if p.startswith(f"train.monitor: '{sweep.config.objective}' is not logged")),
                None)
    if said is None:
        return None
    return (f"{sweep.origin('objective')}: objective: {sweep.config.objective} is not in the trials' evaluations "
            f"({said.split(': ', 1)[1]})")


def _outcome(sweep: Sweep, sweep_dir: Path, number: int, values: dict, report: dict, pruned_at: Optional[int],
             reported: frozenset[int]) -> Outcome:
    """The trial's value from its report, and its state, also recorded in its run.json."""
    path = trial_dir(sweep_dir, number)
    metric = sweep.config.objective.split("/", 1)[1]
    logged = (report.get("metrics") or {}).get("val", {})
    value = logged.get(metric)
    if value is None:
        known = ", ".join(f"val/{name}" for name in logged) or "none: the data has no val split"
        return Outcome("failed", run_dir=str(path), fatal=True, error=(
            f"{sweep.origin('objective')}: objective: {sweep.config.objective} is not in the trials' reports (their "
            f"val metrics: {known}); choose one of them, or add the metric to the base config's eval.metrics"))
    if pruned_at is None and "pruned" in str(report.get("stop_reason") or ""):  # pruned before a kill, resumed
        pruned_at = max(reported) if reported else None
    state = "pruned" if pruned_at is not None else "complete"
    if path.is_dir():
        RunDir(path).update_run(sweep_trial={"sweep": str(sweep_dir), "number": number, "state": state,
                                             "objective": sweep.config.objective, "value": value, "params": values,
                                             "pruned_at_evaluation": None if pruned_at is None else pruned_at + 1})
    return Outcome(state, float(value), str(path), pruned_at=pruned_at)


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental features; the sweep says what
    happens itself."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
