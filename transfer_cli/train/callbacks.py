"""Engine callbacks: metrics log, checkpoints, early stopping, progress on the console."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from transfer_cli.core.console import Console, format_value
from transfer_cli.dist import distributed
from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.engine import BaseCallback, Engine, TrainState
from transfer_cli.train.seeding import rng_state
from transfer_cli.train.strategies import apply_phase, describe, phase_at


class MetricsLog(BaseCallback):
    """One JSON line per evaluation in metrics.jsonl."""

    def __init__(self, run: RunDir, phase: Optional[str] = None) -> None:
        self.run, self.phase = run, phase

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        entry = {"event": "eval", **record}
        if self.phase:
            entry["phase"] = self.phase
        self.run.log(entry)


class Checkpointer(BaseCallback):
    """After each evaluation: a complete step checkpoint, `last` moved to it, `best` too when the
    monitored metric improved, then old checkpoints pruned (never best, never the newest).

    `weights()` gives what model.safetensors holds (the plain architecture, e.g. LoRA merged);
    `resume_state()`, when not None, is the model state needed to continue training exactly.
    """

    def __init__(self, run: RunDir, keep_last: int, monitor: str, weights: Callable[[], dict],
                 resume_state: Callable[[], Optional[dict]] = lambda: None) -> None:
        self.run, self.keep_last, self.monitor = run, keep_last, monitor
        self.weights, self.resume_state = weights, resume_state
        self.saved_step: Optional[int] = None

    def save(self, engine: Engine, state: TrainState, improved: bool, value: Any = None) -> None:
        # every rank takes part (its RNG state and running loss are gathered; FSDP gathers the
        # weights and optimizer state); rank 0 writes
        distributed.broadcast_buffers(engine.model)
        ranks = distributed.gathered({"rng": rng_state(), **engine.local_state()})
        weights, engine_state, model_state = self.weights(), engine.training_state(), self.resume_state()
        self.saved_step = state.step
        if not self.run.writable:
            return
        train_state = {
            "engine": engine_state, "train_state": state.to_dict(), "rng": ranks[0]["rng"],
            "metrics_size": self.run.metrics_size(),
        }
        if len(ranks) > 1:
            train_state["ranks"] = ranks
        if model_state is not None:
            train_state["model"] = model_state
        meta = {"step": state.step, "epoch": state.epoch, "monitor": self.monitor, "value": value,
                "best_step": state.best_step, "time": time.time()}
        path = ckpt.save_checkpoint(self.run.checkpoints, state.step, weights, train_state, meta)
        ckpt.point(self.run.checkpoints, "last", path)
        # without a monitored value (no validation split) the best weights are the latest ones
        if improved or state.best is None:
            ckpt.point(self.run.checkpoints, "best", path)
        ckpt.prune(self.run.checkpoints, self.keep_last)

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        self.save(engine, state, improved, record.get(self.monitor))

    def on_interrupt(self, engine: Engine, state: TrainState) -> None:
        if self.saved_step != state.step:
            self.save(engine, state, improved=False)


class PhaseController(BaseCallback):
    """Applies the strategy's phase for the current step: at the start (also of a resumed run)
    and whenever a new phase begins. Tags each evaluation record with its phase."""

    def __init__(self, plan: list, model: Any, bn: str, console: Console) -> None:
        self.plan, self.model, self.bn, self.console = plan, model, bn, console
        self.current: Any = None

    def _sync(self, step: int) -> bool:
        """Apply the phase of `step`; True when it changed."""
        phase = phase_at(self.plan, step)
        if phase is self.current:
            return False
        apply_phase(self.model, phase, self.bn)
        self.current = phase
        self.console.info(describe(phase, self.model))
        return True

    def on_fit_start(self, engine: Engine, state: TrainState) -> None:
        self._sync(state.step)  # the engine builds its step module right after this

    def on_step_end(self, engine: Engine, state: TrainState) -> None:
        if self._sync(state.step):
            engine.rebuild_step_module()

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        if len(self.plan) > 1:
            record["phase"] = phase_at(self.plan, max(state.step - 1, 0)).name


class EarlyStopping(BaseCallback):
    def __init__(self, patience: int, monitor: str, min_steps: int = 0) -> None:
        self.patience, self.monitor, self.min_steps = patience, monitor, min_steps

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        if state.evals_since_best >= self.patience and state.step >= self.min_steps:
            state.stop_reason = (f"early stopping: {self.monitor} has not improved for {self.patience} "
                                 f"evaluations (best {format_value(state.best)} at step {state.best_step})")


class ConsoleProgress(BaseCallback):
    """A progress bar on a terminal and one plain line per evaluation everywhere."""

    SHOWN = ("train/loss", "val/loss")

    def __init__(self, console: Console, total_steps: int, epochs: Optional[int], monitor: str, label: str) -> None:
        self.console, self.total, self.epochs, self.monitor, self.label = console, total_steps, epochs, monitor, label
        self._bar_cm: Any = None
        self._bar: Any = None
        self._status = ""

    def on_fit_start(self, engine: Engine, state: TrainState) -> None:
        self._bar_cm = self.console.progress(self.total, self.label, completed=state.step)
        self._bar = self._bar_cm.__enter__()

    def on_step_end(self, engine: Engine, state: TrainState) -> None:
        self._bar.update(state.step, self._status)

    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        done = format_value(record["epoch"])
        epoch = f"epoch {done}/{self.epochs}" if self.epochs else f"epoch {done}"
        shown = [k for k in self.SHOWN if k in record]
        if self.monitor in record and self.monitor not in shown:
            shown.append(self.monitor)
        values = "  ".join(f"{k} {format_value(record[k])}" for k in shown)
        mark = "  *best*" if improved else ""
        self.console.info(f"{self.label} {epoch}  step {state.step}/{self.total}  {values}  "
                          f"lr {record['lr']:.2e}{mark}")
        if self.monitor in record:
            self._status = f"{self.monitor} {format_value(record[self.monitor])}"

    def on_fit_end(self, engine: Engine, state: TrainState) -> None:
        self.close()

    def on_interrupt(self, engine: Engine, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        if self._bar_cm is not None:
            self._bar_cm.__exit__(None, None, None)
            self._bar_cm = None
