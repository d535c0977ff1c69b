"""The Optuna study of a sweep, stored in `<sweep>/study.db` (sqlite): the same mechanism for grid,
random and TPE, for resuming a killed sweep and for workers in several processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer_cli.core.errors import RunDirError
from transfer_cli.sweep.schema import Sweep

STUDY_FILE = "study.db"
# states of trials that have ended (what the budget counts)
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def storage(sweep_dir: Path) -> Any:
    from optuna.storages import RDBStorage

    # workers in other processes write the same file: wait for its lock instead of failing at once
    return RDBStorage(f"sqlite:///{(sweep_dir / STUDY_FILE).absolute()}",
                      engine_kwargs={"connect_args": {"timeout": 60}})


def sampler(sweep: Sweep, offset: int) -> Any:
    """The method's sampler. `offset` (the trials the study has already) moves the seed on, so that
    a resumed random or TPE sweep does not draw its first trials again."""
    import optuna

    cfg = sweep.config
    if cfg.method == "grid":
        return _grid_sampler()({key: list(dim.values or ()) for key, dim in cfg.space.items()},
                                           seed=cfg.seed)
    if cfg.method == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed + offset)
    return optuna.samplers.TPESampler(seed=cfg.seed + offset)


def _grid_sampler() -> Any:
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Without the stop at the end of the grid: Optuna's works only inside study.optimize
        (ask-and-tell raises there); the sweep's budget is the grid's size instead."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return Grid


def pruner(sweep: Sweep) -> Any:
    import optuna

    rule = sweep.config.pruning
    if not rule.median:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=rule.startup_trials, n_warmup_steps=rule.warmup_evals)


# apart the seeds of --parallel's workers, which load the study at the same moment (same offset)
WORKER_SEED_STRIDE = 1_000_003


def open_study(sweep: Sweep, sweep_dir: Path, direction: str, create: bool, worker: int = 0) -> Any:
    """Create the study (a new sweep) or load it (resume, a worker). A resumed sweep must be the
    same sweep: its file's settings are kept in the study and compared. `worker`: the index of a
    --parallel process; each draws from its own seed, else random and TPE workers draw the same values."""
    import optuna

    store = storage(sweep_dir)
    settings = sweep.config.model_dump(mode="json", by_alias=True)
    if create:
        study = optuna.create_study(study_name=sweep.name, storage=store, direction=direction,
                                    sampler=sampler(sweep, 0), pruner=pruner(sweep))
        study.set_user_attr("sweep", settings)
        return study
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if len(names) != 1:
        raise RunDirError(f"{sweep_dir / STUDY_FILE} holds {len(names)} studies, expected the one of this sweep")
    probe = optuna.load_study(study_name=names[0], storage=store)
    if probe.user_attrs.get("sweep") != settings:
        raise RunDirError(f"cannot resume {sweep_dir}: the sweep file {sweep.path} changed since the sweep started "
                          f"(its settings are kept in {STUDY_FILE}); restore it, or use --overwrite to start again")
    return optuna.load_study(study_name=names[0], storage=store, sampler=sampler(sweep, len(probe.trials) + WORKER_SEED_STRIDE * worker),
                             pruner=pruner(sweep))


def trials_in(study: Any, *states: str) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states))


def tell(study: Any, trial: Any, outcome: Any) -> None:
    """The trial's end into the study, with what the table shows (run dir, final value, error)."""
    from optuna.trial import TrialState

    trial.set_user_attr("run_dir", outcome.run_dir)
    if outcome.value is not None:
        trial.set_user_attr("value", outcome.value)
    if outcome.error:
        trial.set_user_attr("error", outcome.error.splitlines()[0])
    if outcome.fatal:  # the sweep's problem, for the parent of --parallel's workers to say
        trial.set_user_attr("fatal", outcome.error)
    if outcome.pruned_at is not None:
        trial.set_user_attr("pruned_at_evaluation", outcome.pruned_at + 1)
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
    else:
        study.tell(trial, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL)
