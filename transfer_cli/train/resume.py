"""Continuing an interrupted run exactly where its last complete checkpoint left it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import yaml

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.core.errors import CheckpointError, RunDirError
from transfer_cli.data.registry import DATASETS
from transfer_cli.dist import distributed
from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.engine import Engine, TrainState
from transfer_cli.train.seeding import set_rng_state
from transfer_cli.weights.files import read_weights


def restore_training(run: RunDir, exp: Experiment, engine: Engine, console: Console,
                     smoke: bool = False) -> Optional[TrainState]:
    """Load weights, optimizer, scaler, RNG and counters from the newest usable checkpoint.

    Returns None when the run already completed. A checkpoint that fails its integrity check
    or cannot be read is set aside (renamed `unusable-step-*`) with a warning and the previous
    complete one is used; if checkpoints exist but none is usable, it fails: never a silent
    restart from step 0. Under torchrun rank 0 does all this and sends what it restored to the
    other ranks, each of which takes its own RNG state and running loss from it.
    """
    several = distributed.world().is_distributed
    # under torchrun rank 0 chooses the checkpoint and repairs the run dir, then every rank loads
    # what it sent (loading into an FSDP model is a collective operation)
    restored = distributed.on_main(lambda: _restore(run, exp, engine, console, smoke, load=not several))
    if restored is None:
        return None
    train_state, state = restored
    if several and state is not None:
        distributed.load_model_state(engine.model, state["weights"])
        engine.load_training_state(state["engine"])
        _restore_rank_state(state, engine, console)
    return train_state


def _restore_rank_state(state: dict, engine: Engine, console: Console) -> None:
    """This rank's RNG state and running loss, saved by the same number of ranks."""
    ranks = state.get("ranks") or []
    world = distributed.world()
    if not _same_process_count(state, console):
        return
    set_rng_state(ranks[world.rank]["rng"])
    engine.load_local_state(ranks[world.rank])


def _same_process_count(state: dict, console: Console) -> bool:
    """Whether the checkpoint was written by as many processes as this run has; warns if not."""
    written, size = len(state.get("ranks") or []) or 1, distributed.world().size
    if written != size:
        console.warn(f"the checkpoint was written by {written} process(es), this run has {size}: "
                     f"training continues, but not bit for bit as the original run would have")
    return written == size


def _restore(run: RunDir, exp: Experiment, engine: Engine, console: Console, smoke: bool,
             load: bool) -> Optional[tuple[TrainState, Optional[dict]]]:
    """On rank 0 (or alone): (train state, the checkpoint's state with its weights, or None when
    there is no checkpoint yet), or None when the run completed. `load`: into this process's
    engine too (alone), which also proves the checkpoint fits the model."""
    check_same_config(run, exp, smoke)
    if run.read_run().get("status") == "completed":
        return None
    for path in reversed(ckpt.complete_checkpoints(run.checkpoints)):
        try:
            ckpt.verify(path)
            state = ckpt.load_state(path)
            # a run whose exported weights differ from its training state (LoRA) keeps the latter
            weights = state["model"] if "model" in state else read_weights(path / ckpt.WEIGHTS)
            if load:
                engine.model.load_state_dict(weights)
                engine.load_training_state(state["engine"])
            train_state = TrainState.from_dict(state["train_state"])
        except (CheckpointError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            aside = _set_aside(path)
            console.warn(f"checkpoint {path.name} is unusable ({exc}); moved it to {aside.name} and trying the "
                         f"previous one")
            continue
        if load:
            set_rng_state(state["rng"])
            _same_process_count(state, console)
        run.truncate_metrics(state["metrics_size"])
        _repair_aliases(run, path, train_state)
        console.info(f"resuming {run.path} from step {train_state.step} ({path.name})")
        return train_state, {**state, "weights": weights}
    if _has_checkpoints(run.checkpoints):
        raise CheckpointError(f"cannot resume {run.path}: no checkpoint in {run.checkpoints} is usable; "
                              f"use --overwrite to start again")
    console.warn(f"{run.path} has no checkpoint yet; starting it again from step 0")
    run.truncate_metrics(0)
    return TrainState(), None


def _has_checkpoints(root: Path) -> bool:
    return root.is_dir() and any(p.name.startswith(("step-", "unusable-step-")) for p in root.iterdir())


def _set_aside(path: Path) -> Path:
    """Keep an unusable checkpoint for inspection, out of the way of resuming and retention."""
    aside = path.with_name(f"unusable-{path.name}")
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(path, aside)
    return aside


def _repair_aliases(run: RunDir, resumed: Path, state: TrainState) -> None:
    """Point `last` at the checkpoint resumed from and `best` at the best step's checkpoint:
    a run killed between writing a checkpoint and switching the aliases left them behind."""
    ckpt.point(run.checkpoints, "last", resumed)
    best = resumed if state.best_step is None else ckpt.step_dir(run.checkpoints, state.best_step)
    ckpt.point(run.checkpoints, "best", best if ckpt.is_complete(best) else resumed)


#: key paths a resumed run may change: where the run lives and where it is tracked are not part of
#: the experiment, and activation checkpointing changes the memory a step takes, not its numbers
NOT_COMPARED = ("run_dir", "log", "train.activation_checkpointing")


def check_same_config(run: RunDir, exp: Experiment, smoke: bool = False) -> None:
    """Resuming with another config (or a --smoke run without --smoke, or the reverse) would
    silently mix two experiments: refuse and say where."""
    started_smoke = bool(run.read_run().get("smoke", False))
    if started_smoke != smoke:
        flag = "with" if started_smoke else "without"
        raise RunDirError(f"cannot resume {run.path}: it was started {flag} --smoke; resume it {flag} --smoke, "
                          f"or start a new run (--run-dir / --overwrite)")
    try:
        stored = run.read_config()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)  # a YAML error's own text spans several lines
        why = f"line {mark.line + 1}: {exc.problem}" if mark else " ".join(str(exc).split())
        raise RunDirError(f"cannot resume {run.path}: its config.yaml is unreadable ({why})") from None
    if not isinstance(stored, dict):
        raise RunDirError(f"cannot resume {run.path}: its config.yaml holds no config (empty, only comments or "
                          f"not a mapping of keys); restore it, or start a new run (--run-dir / --overwrite)")
    try:  # keys added to the schema since the run started count as their defaults
        stored = Experiment.model_validate(stored).model_dump(mode="json")
    except ValueError:  # a config of an older schema: compared as it is written
        pass
    # where the run lives and where it is tracked are not part of the experiment: a run dir that
    # was moved resumes, and so does one with a tracker turned on or off
    stored = _without(stored, NOT_COMPARED)
    current = _without(exp.model_dump(mode="json"), NOT_COMPARED)
    _drop_unrecorded_fitted(stored, current, exp.data.name)
    differences = _diff(stored, current)
    if differences:
        shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
        raise RunDirError(f"cannot resume {run.path}: the config differs from the run's config.yaml at {shown}. "
                          f"Resume with the same config, or start a new run (--run-dir / --overwrite)")


def _without(config: dict, paths: tuple[str, ...]) -> dict:
    """A copy of `config` without these dotted key paths."""
    out = dict(config)
    for path in paths:
        *parents, last = path.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                break
            node[key] = node = dict(node[key])
        else:
            node.pop(last, None)
    return out


def _drop_unrecorded_fitted(stored: dict, current: dict, data_name: str) -> None:
    """A fitted data param the run's config.yaml does not hold was added to its source after the run
    started (e.g. text_csv's tokenizer_sha256): recording it now is not a change of experiment."""
    keys = getattr(DATASETS.get(data_name).params, "fitted_keys", ()) if data_name in DATASETS else ()
    old, new = ((c.get("data") or {}).get("params") for c in (stored, current))
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    for key in keys:
        if old.get(key) is None:
            old.pop(key, None)
            new.pop(key, None)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [f"{prefix} (run: {old!r}, now: {new!r})"]
