"""The training loop and nothing else: it knows no YAML and no file layout.

It gets built parts (model, optimizer, schedule, loss, metrics) and callbacks (checkpointing,
logging, early stopping, progress), and does per step only what a hand-written loop does:
forward, loss, backward, (clip), step. The loss is summed on the device and read once per
evaluation; metrics are computed only when evaluating.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

import torch
from torch import nn

from transfer_cli.core.errors import Interrupted, RunFailed
from transfer_cli.data.bundle import TensorSplit
from transfer_cli.dist import distributed
from transfer_cli.eval.evaluation import Evaluator, autocast
from transfer_cli.train.precise_bn import PreciseBN, has_batchnorm, training_batchnorms
from transfer_cli.train.schedules import Schedule


@dataclass
class EngineConfig:
    epochs: int
    batch_size: int
    max_steps: Optional[int] = None
    grad_accum: int = 1
    clip_grad_norm: Optional[float] = None
    precision: str = "fp32"
    eval_every_steps: Optional[int] = None
    monitor: str = "val/loss"
    monitor_higher_is_better: bool = False
    monitor_min_delta: float = 0.0
    seed: int = 0
    precise_bn: int = 0  # training batches over which BatchNorm statistics are recomputed before each evaluation


@dataclass
class TrainState:
    """Counters that, with the weights, optimizer and RNG states, define where training is."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: Optional[float] = None
    best_step: Optional[int] = None
    evals_since_best: int = 0
    last_eval_step: Optional[int] = None
    stop_reason: Optional[str] = None
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**data)


class Callback(Protocol):
    def on_fit_start(self, engine: "Engine", state: TrainState) -> None: ...
    def on_step_end(self, engine: "Engine", state: TrainState) -> None: ...
    def on_eval_end(self, engine: "Engine", state: TrainState, record: dict, improved: bool) -> None: ...
    def on_interrupt(self, engine: "Engine", state: TrainState) -> None: ...
    def on_fit_end(self, engine: "Engine", state: TrainState) -> None: ...


class BaseCallback:
    """No-op hooks; subclass and override what you need."""

    def on_fit_start(self, engine: "Engine", state: TrainState) -> None: ...
    def on_step_end(self, engine: "Engine", state: TrainState) -> None: ...
    def on_eval_end(self, engine: "Engine", state: TrainState, record: dict, improved: bool) -> None: ...
    def on_interrupt(self, engine: "Engine", state: TrainState) -> None: ...
    def on_fit_end(self, engine: "Engine", state: TrainState) -> None: ...


class StepModule(Protocol):
    """What the training step calls: the model, or the model wrapped (DDP, torch.compile)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def no_sync(self, accumulating: bool) -> contextlib.AbstractContextManager: ...


class _Plain:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def no_sync(self, accumulating: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class Engine:
    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, loss_fn: nn.Module,
        evaluate: Evaluator, device: torch.device, cfg: EngineConfig, callbacks: tuple = (),
        step_module: Optional[Callable[[], StepModule]] = None,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.loss_fn = model, optimizer, schedule, loss_fn
        self.evaluate, self.device, self.cfg = evaluate, device, cfg
        self.callbacks = list(callbacks)
        self._build_step_module = step_module or (lambda: _Plain(model))
        self.step_module: StepModule = _Plain(model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self._loss_sum = torch.zeros((), device=device)
        self._loss_count = 0
        self._signal: Optional[int] = None
        self._batches_per_epoch = 0
        # on the CPU a tensor is read without waiting for a device: the NaN guard can look every step
        self._loss_readable_every_step = device.type == "cpu"
        # under torchrun the ranks vote after each step, so that all stop (signal, NaN) at the same one
        self._vote = distributed.StepVote(device) if distributed.world().is_distributed else None
        self._stop_agreed = False
        self._precise_bn: Optional[PreciseBN] = None
        # the BatchNorms that train in the current phase and, at the step where a phase began, in
        # the one before (whose weights the evaluation at that step sees)
        self._norms: list[nn.Module] = []
        self._norms_before: Optional[list[nn.Module]] = None
        self._phase_began_at = 0
        self._step = 0

    # ---- sizes -------------------------------------------------------------------------------
    def steps_per_epoch(self, train: TensorSplit) -> int:
        return math.ceil(train.num_batches(self.cfg.batch_size) / self.cfg.grad_accum)

    def total_steps(self, train: TensorSplit) -> int:
        return self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch(train)

    # ---- training ----------------------------------------------------------------------------
    def fit(self, train: TensorSplit, val: Optional[TensorSplit], state: TrainState,
            until: Optional[int] = None) -> TrainState:
        """Train until the step budget (or step `until`) is reached or a callback stops it."""
        total = min(self.total_steps(train), until or 1 << 62)
        self._batches_per_epoch = train.num_batches(self.cfg.batch_size)
        reuse = self._precise_bn is not None and self._precise_bn.source is train  # one subset (and loader) per split
        if self.cfg.precise_bn and has_batchnorm(self.model) and not reuse:
            self._precise_bn = PreciseBN(train, self.cfg.precise_bn, self.cfg.batch_size, self.cfg.seed)
        # fit starts at a step boundary: gradients a caller left behind must not leak into the first step
        self.model.zero_grad(set_to_none=True)
        self._step, self._norms_before = state.step, None
        self._emit("on_fit_start", state)
        self.rebuild_step_module()
        with self._signals_trapped():
            while state.step < total and not state.stop_reason:
                self._train_epoch(train, val, state, total)
            if self._vote is not None:  # the vote on the last step is still out: every rank reads it
                self._stop_if_signalled(state, settle=True)
            # the run's last step is always evaluated; a segment that ends at a phase boundary
            # (`until`) is not, so segmenting the run does not change when evaluations happen
            is_run_end = state.step >= self.total_steps(train)
            if is_run_end and state.last_eval_step != state.step:
                self._eval_point(val, state)
        self._emit("on_fit_end", state)
        return state

    def rebuild_step_module(self) -> None:
        """Rebuild what the step calls; DDP covers the parameters that train when it is built, so
        this runs at the start of fit and whenever a strategy phase changes the trainable set."""
        self.step_module = self._build_step_module()
        if self._precise_bn is not None:
            self._norms_before, self._norms = self._norms, training_batchnorms(self.model)
            self._phase_began_at = self._step

    def _train_epoch(self, train: TensorSplit, val: Optional[TensorSplit], state: TrainState, total: int) -> None:
        self.model.train()
        n_batches = train.num_batches(self.cfg.batch_size)
        pending = 0
        batches = train.batches(self.cfg.batch_size, self.device, shuffle=True, seed=self.cfg.seed,
                                epoch=state.epoch, start=state.batch, shard=distributed.world().shard)
        for x, y in batches:
            state.batch += 1
            pending += 1
            is_update = pending == self.cfg.grad_accum or state.batch == n_batches
            # under DDP gradients are exchanged in backward: only the micro-batch that completes a step needs it
            with self.step_module.no_sync(accumulating=not is_update):
                self._forward_backward(x, y, self._group_size(state.batch, n_batches))
            if not is_update:
                continue
            pending = 0
            self._optimizer_step(state.step)
            state.step += 1
            self._step = state.step
            self._check_health(state)
            self._emit("on_step_end", state)
            is_eval_step = bool(self.cfg.eval_every_steps) and state.step % self.cfg.eval_every_steps == 0
            if is_eval_step:
                self._eval_point(val, state)
            self._stop_if_signalled(state)
            if state.step >= total or state.stop_reason:
                break
        epoch_done = state.batch >= n_batches
        if epoch_done:
            state.epoch += 1
            state.batch = 0
            if not self.cfg.eval_every_steps:
                self._eval_point(val, state)
                self._stop_if_signalled(state, settle=True)

    def _group_size(self, batch: int, n_batches: int) -> int:
        """How many micro-batches make the step that batch number `batch` (1-based) belongs to:
        grad_accum, except for the last step of an epoch, which takes the batches left."""
        first = (batch - 1) // self.cfg.grad_accum * self.cfg.grad_accum
        return min(self.cfg.grad_accum, n_batches - first)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, group_size: int) -> None:
        # forward and backward of one micro-batch; the step's gradient is the mean over its group
        with autocast(self.device, self.cfg.precision):
            loss = self.loss_fn(self.step_module(x).float(), y)
        averaged = loss / group_size if group_size > 1 else loss
        self.scaler.scale(averaged).backward()
        self._loss_sum += loss.detach()
        self._loss_count += 1

    def _optimizer_step(self, step: int) -> None:
        factor = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_health(self, state: TrainState) -> None:
        """After each step: a NaN/Inf loss fails the run, a signal stops it (under torchrun, as the
        ranks' vote says: one step later, at the same step everywhere)."""
        if self._vote is None:
            self._check_finite(state)
        else:
            self._follow(self._vote.cast(state.step, self._signal is not None, self._loss_sum), state)

    def _follow(self, verdict: Optional[distributed.Verdict], state: TrainState) -> None:
        if verdict is None:
            return
        if verdict.diverged:
            raise self._diverged("loss", state, verdict.step)
        self._stop_agreed = self._stop_agreed or verdict.stop

    def _check_finite(self, state: TrainState) -> None:
        # On CPU reading the running sum costs nothing (.item() is 0.3 us, torch.isfinite 6 us); on
        # an accelerator it would sync every step, so there the check waits for the next evaluation.
        if self._loss_readable_every_step and not math.isfinite(self._loss_sum.item()):
            raise self._diverged("loss", state, state.step)

    def _diverged(self, what: str, state: TrainState, step: Optional[int] = None) -> RunFailed:
        """The error for a NaN/Inf `what`, at `step` when known exactly, else since the last evaluation."""
        where = f"at step {step}" if step is not None else \
            f"between steps {(state.last_eval_step or 0) + 1} and {state.step}"
        return RunFailed(f"the {what} became NaN/Inf {where} (epoch {state.epoch + 1}); the run is stopped; "
                         f"earlier checkpoints are intact. Try a lower optim.lr, train.clip_grad_norm, "
                         f"or train.precision: fp32")

    def _head_lr(self) -> float:
        """The LR logged: the head's (the configured optim.lr under the schedule), not that of
        whichever group comes first, which may be a backbone group scaled down or frozen."""
        groups = self.optimizer.param_groups
        heads = [g for g in groups if any(name.startswith("head.") for name in g.get("names", ()))]
        return max(g["lr"] for g in heads) if heads else groups[0]["lr"]

    # ---- evaluation --------------------------------------------------------------------------
    def _eval_point(self, val: Optional[TensorSplit], state: TrainState) -> None:
        epochs_done = state.epoch + state.batch / max(self._batches_per_epoch, 1)
        record: dict[str, Any] = {"step": state.step, "epoch": round(epochs_done, 3), "time": time.time(),
                                  "lr": self._head_lr()}
        loss_sum, count = self._train_loss_totals()
        if count:
            record["train/loss"] = loss_sum / count
            if not math.isfinite(record["train/loss"]):
                raise self._diverged("loss", state)
        self._loss_sum.zero_()
        self._loss_count = 0
        if self._precise_bn is not None:  # evaluated and checkpointed with statistics of the current weights
            ended = state.step == self._phase_began_at and self._norms_before is not None
            self._precise_bn(self.model, self._norms_before if ended else self._norms, self.device, self.cfg.precision)
        distributed.broadcast_buffers(self.model)
        if val is not None:
            record.update({f"val/{k}": v for k, v in self.evaluate(val).items()})
            if not math.isfinite(record["val/loss"]):  # broken weights: stop before they are checkpointed
                raise self._diverged("validation loss", state, state.step)
        improved = self._update_best(state, record)
        state.last_eval_step = state.step
        state.history.append({k: record[k] for k in record if k != "time"})
        self._emit("on_eval_end", state, record, improved)

    def _train_loss_totals(self) -> tuple[float, int]:
        """The training loss summed since the last evaluation, and the micro-batches summed (all ranks)."""
        if self._vote is None:
            return self._loss_sum.item(), self._loss_count
        totals = torch.stack([self._loss_sum.double(), torch.tensor(float(self._loss_count), device=self.device,
                                                                     dtype=torch.float64)])
        distributed.all_sum(totals)
        return totals[0].item(), int(totals[1].item())

    def _update_best(self, state: TrainState, record: dict) -> bool:
        value = record.get(self.cfg.monitor)
        if value is None or not math.isfinite(value):
            return False
        delta = self.cfg.monitor_min_delta
        if state.best is None:
            better = True
        elif self.cfg.monitor_higher_is_better:
            better = value > state.best + delta
        else:
            better = value < state.best - delta
        if better:
            state.best, state.best_step, state.evals_since_best = value, state.step, 0
        else:
            state.evals_since_best += 1
        return better

    # ---- state -------------------------------------------------------------------------------
    def training_state(self) -> dict:
        # the running loss sum too: a checkpoint written between evaluations (on a signal) must
        # give the next evaluation the same train/loss as a run that never stopped
        return {"optimizer": distributed.optimizer_state(self.model, self.optimizer),
                "scaler": self.scaler.state_dict(), **self.local_state()}

    def local_state(self) -> dict:
        """What differs between ranks under torchrun: each rank's running loss."""
        return {"loss_sum": self._loss_sum.detach().cpu().clone(), "loss_count": self._loss_count}

    def load_training_state(self, state: dict) -> None:
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_local_state(state)

    def load_local_state(self, state: dict) -> None:
        if "loss_sum" in state:
            self._loss_sum = state["loss_sum"].to(self.device)
            self._loss_count = state["loss_count"]

    def continue_from(self, other: "Engine") -> None:
        """Take over another engine's optimizer, grad scaler and running training loss (an engine
        over the head alone continues the same run on cached features)."""
        self.optimizer, self.scaler = other.optimizer, other.scaler
        self._loss_sum, self._loss_count = other._loss_sum, other._loss_count

    # ---- signals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_trapped(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask the loop to stop after the current step (and write a checkpoint)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum: int, frame: Any) -> None:
            if self._signal is None:
                self._signal = signum
            else:  # a second signal must not break the checkpoint being written: say so, carry on
                print(f"{signal.Signals(signum).name} again: finishing the current step and its checkpoint, "
                      f"then exiting", file=sys.stderr, flush=True)

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            # after a stop request the process is on its way out: later signals stay harmless
            # notes, so that they cannot cut short the writing of run.json
            for sig, handler in previous.items():
                signal.signal(sig, request_stop if self._signal is not None else handler)

    def _stop_if_signalled(self, state: TrainState, settle: bool = False) -> None:
        """Stop (checkpoint, then Interrupted) when a signal asked for it; under torchrun when the
        ranks agreed on it (`settle`: wait for the vote now rather than after the next step)."""
        if self._vote is not None and settle:
            self._follow(self._vote.settle(state.step, self._signal is not None, self._loss_sum), state)
        requested = self._stop_agreed if self._vote is not None else self._signal is not None
        if not requested:
            return
        self._emit("on_interrupt", state)
        signum = self._signal or signal.SIGTERM  # under torchrun, another rank may have received it
        name = signal.Signals(signum).name
        raise Interrupted(f"{name} received: stopped at step {state.step} after writing a resumable checkpoint; "
                          f"continue with --resume", exit_code=128 + signum)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
