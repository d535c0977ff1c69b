"""`transfer sweep`: check the sweep file and its space against the base config, make (or resume)
the sweep directory and its study, run trials until the budget is spent (in this process, or in N
worker processes pulling trials from the same sqlite study), then write the table and best.yaml.

    <sweep>/study.db  trials/NNN/ (run dirs)  features/  trials.csv  sweep.json  sweep.md  best.yaml  sweep.png
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from transfer_cli.core.console import Console
from transfer_cli.core.errors import ConfigError, RunDirError, RunFailed, UsageError
from transfer_cli.runs import runlock
from transfer_cli.sweep.results import trials_table, write_results
from transfer_cli.sweep.schema import Sweep
from transfer_cli.sweep.space import check_sweep, direction, distributions
from transfer_cli.sweep.study import FINISHED, STUDY_FILE, open_study, tell, trials_in
from transfer_cli.sweep.trial import quiet_optuna, run_trial


@dataclass
class SweepOptions:
    run_dir: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    parallel: int = 1
    smoke: bool = False
    worker: Optional[int] = None  # index of one of --parallel's processes: trials only, the parent does the rest


def sweep_path(sweep: Sweep, run_dir: Optional[str]) -> Path:
    """--run-dir, else runs/<sweep file's folder>/<sweep name>."""
    if run_dir:
        return Path(run_dir)
    parent = sweep.path.parent.name
    return Path("runs") / parent / sweep.name if parent else Path("runs") / sweep.name


def run_sweep(sweep: Sweep, opts: SweepOptions, console: Console) -> dict:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError("transfer sweep needs Optuna: pip install 'transfer-cli[sweep]' (or pip install optuna)") \
            from None
    quiet_optuna()
    path = sweep_path(sweep, opts.run_dir)
    if opts.worker is not None:
        study = open_study(sweep, path, direction(sweep), create=False, worker=opts.worker)
        run_trials(sweep, path, study, console, opts.smoke)
        return {}
    goal = check_sweep(sweep)  # every problem of the sweep before anything is written
    _prepare(path, opts)
    study = open_study(sweep, path, goal, create=not opts.resume)
    console.info(f"sweep {sweep.name}: {sweep.config.method} over {', '.join(sweep.config.space)}, "
                 f"{sweep.config.objective} ({goal}), budget {_budget_line(sweep)}; sweep dir {path}")
    try:
        resume_stopped(sweep, path, study, console, opts.smoke)
        if opts.parallel > 1:
            run_workers(sweep, path, study, opts, console)
        else:
            run_trials(sweep, path, study, console, opts.smoke)
    finally:  # also when stopped: the table of what has finished so far
        summary = write_results(path, sweep, study)
    console.show(trials_table(summary["trials"], sweep))
    if summary["best"] is None:
        raise RunFailed(f"no trial of sweep {sweep.name} completed; see {path / 'trials.csv'} for each trial's error")
    console.info(f"best: trial {summary['best']['trial']:03d}; its config: {path / 'best.yaml'}")
    return summary


def validate_sweep(sweep: Sweep, console: Console) -> dict:
    """`transfer validate SWEEP.yaml`: every check a sweep makes before its first trial; runs nothing."""
    goal = check_sweep(sweep)
    console.info(f"sweep {sweep.name} is valid: {sweep.config.method} over {', '.join(sweep.config.space)} on "
                 f"{sweep.base} ({sweep.config.stage}), {sweep.config.objective} ({goal}), budget {_budget_line(sweep)}")
    return {"sweep": sweep.name, "valid": True, "base": str(sweep.base), "stage": sweep.config.stage,
            "direction": goal, "trials": sweep.trial_budget()}


def _budget_line(sweep: Sweep) -> str:
    trials, minutes = sweep.trial_budget(), sweep.config.budget.minutes
    parts = ([f"{trials} trial{'s' * (trials != 1)}"] if trials else []) + (
        [f"{minutes:g} minute{'s' * (minutes != 1)}"] if minutes else [])
    return " or ".join(parts)


def _prepare(path: Path, opts: SweepOptions) -> None:
    """The sweep directory for this command: never silently reused or replaced; locked while it runs."""
    if opts.resume and opts.overwrite:  # one keeps the trials, the other deletes them: never guess which
        raise UsageError(f"--resume continues the sweep in {path} and --overwrite replaces it; give one of them")
    has_content = path.is_dir() and any(path.iterdir())
    is_sweep = (path / STUDY_FILE).is_file()
    if opts.resume:
        if not is_sweep:
            raise RunDirError(f"cannot resume {path}: it is not a sweep directory (no {STUDY_FILE}); drop --resume")
    elif has_content and not opts.overwrite:
        raise RunDirError(f"sweep dir {path} already exists; use --resume to continue it, --overwrite to replace "
                          f"it, or --run-dir to write elsewhere")
    elif has_content and not is_sweep:
        raise RunDirError(f"refusing to overwrite {path}: it is not a sweep directory (no {STUDY_FILE})")
    if has_content and opts.overwrite and not opts.resume:
        runlock.hold(path)  # a sweep still running there is refused before anything is moved
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        runlock.moved_away(path)
        shutil.rmtree(old)
    elif has_content:
        runlock.hold(path, create=True)  # a second sweep on it is refused
    path.mkdir(parents=True, exist_ok=True)
    runlock.hold(path, create=True)


def resume_stopped(sweep: Sweep, path: Path, study: Any, console: Console, smoke: bool) -> None:
    """Trials left running by a sweep that was stopped: continued from their run directory's last
    checkpoint (or started, if it was stopped before the run was made)."""
    import optuna

    for frozen in trials_in(study, "RUNNING"):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        outcome = run_trial(sweep, path, trial, console, smoke, frozenset(frozen.intermediate_values))
        _tell_or_stop(sweep, study, trial, outcome)


def run_trials(sweep: Sweep, path: Path, study: Any, console: Console, smoke: bool) -> None:
    """Ask, train, tell, until the budget is spent (trials finished or started, or the minutes)."""
    budget, minutes = sweep.trial_budget(), sweep.config.budget.minutes
    space = distributions(sweep)
    began = time.monotonic()
    while True:
        started = len(trials_in(study, *FINISHED, "RUNNING"))
        if budget is not None and started >= budget:
            return
        if minutes is not None and time.monotonic() - began >= 60 * minutes:
            console.info(f"time budget of {minutes:g} minutes spent: no new trial")
            return
        trial = study.ask(space)
        _tell_or_stop(sweep, study, trial, run_trial(sweep, path, trial, console, smoke))


def _tell_or_stop(sweep: Sweep, study: Any, trial: Any, outcome: Any) -> None:
    """The outcome into the study; a fault every trial would have (the objective is not reported)
    stops the sweep (exit 2) instead of failing each trial in turn."""
    tell(study, trial, outcome)
    if outcome.fatal:
        raise ConfigError([outcome.error], header=f"invalid sweep {sweep.path}")


def run_workers(sweep: Sweep, path: Path, study: Any, opts: SweepOptions, console: Console) -> None:
    """`opts.parallel` processes, each running trials from the shared study; a signal to this one
    is passed on to them (each stops its trial at a resumable checkpoint)."""
    args = [sys.executable, "-m", "transfer_cli", "sweep", str(sweep.path), "--run-dir", str(path), "--quiet"] \
        + (["--smoke"] if opts.smoke else [])
    console.info(f"{opts.parallel} worker processes pull trials from {path / STUDY_FILE}")
    workers = [subprocess.Popen(args + ["--worker", str(i)], start_new_session=True) for i in range(opts.parallel)]
    try:
        codes = [w.wait() for w in workers]
    except BaseException:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait()
        raise
    failed = [c for c in codes if c not in (0,)]
    fatal = sorted({t.user_attrs["fatal"] for t in trials_in(study, "FAIL") if t.user_attrs.get("fatal")})
    if fatal:  # a problem of the sweep that stopped the workers: said here, --resume would not help
        raise ConfigError(fatal, header=f"invalid sweep {sweep.path}")
    if failed:
        raise RunFailed(f"{len(failed)} of {opts.parallel} sweep workers stopped with exit code "
                        f"{', '.join(map(str, failed))}; --resume continues the sweep")
