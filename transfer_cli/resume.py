"""Continuing an interrupted run exactly where its last complete checkpoint left it."""

from __future__ import annotations

from typing import Any, Optional

from transfer_cli import checkpoint as ckpt
from transfer_cli.config.schema import Experiment
from transfer_cli.console import Console
from transfer_cli.engine import Engine, TrainState
from transfer_cli.errors import CheckpointError, RunDirError
from transfer_cli.rundir import RunDir
from transfer_cli.seeding import set_rng_state


def restore_training(run: RunDir, exp: Experiment, engine: Engine, console: Console) -> Optional[TrainState]:
    """Load weights, optimizer, scaler, RNG and counters from the newest readable checkpoint.

    Returns None when the run already completed. A corrupt newest checkpoint falls back to the
    previous complete one with a warning; if checkpoints exist but none is readable, it fails.
    """
    if run.read_run().get("status") == "completed":
        return None
    check_same_config(run, exp)
    for path in _candidates(run):
        try:
            state = ckpt.load_state(path)
            # a run whose exported weights differ from its training state (LoRA) keeps the latter
            weights = state["model"] if "model" in state else ckpt.read_weights(path / ckpt.WEIGHTS)
            engine.model.load_state_dict(weights)
            engine.load_training_state(state["engine"])
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            console.warn(f"checkpoint {path} is unusable ({exc}); trying the previous one")
            continue
        set_rng_state(state["rng"])
        run.truncate_metrics(state["metrics_size"])
        train_state = TrainState.from_dict(state["train_state"])
        console.info(f"resuming {run.path} from step {train_state.step} ({path.name})")
        return train_state
    if ckpt.complete_checkpoints(run.checkpoints):
        raise CheckpointError(f"cannot resume {run.path}: no checkpoint in {run.checkpoints} is readable; "
                              f"use --overwrite to start again")
    console.warn(f"{run.path} has no complete checkpoint yet; starting it again from step 0")
    run.truncate_metrics(0)
    return TrainState()


def _candidates(run: RunDir) -> list:
    """`last` first, then every other complete checkpoint, newest first."""
    last = ckpt.alias_target(run.checkpoints, "last")
    others = [p for p in reversed(ckpt.complete_checkpoints(run.checkpoints)) if p != last]
    if last is None and others:
        return others
    return ([last] if last else []) + others


def check_same_config(run: RunDir, exp: Experiment) -> None:
    """Resuming with another config would silently mix two experiments: refuse and say where."""
    try:
        stored = run.read_config()
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot resume {run.path}: its config.yaml is unreadable ({exc})") from None
    differences = _diff(stored, exp.model_dump(mode="json"))
    if differences:
        shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
        raise RunDirError(f"cannot resume {run.path}: the config differs from the run's config.yaml at {shown}. "
                          f"Resume with the same config, or start a new run (--run-dir / --overwrite)")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [f"{prefix} (run: {old!r}, now: {new!r})"]
