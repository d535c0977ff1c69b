"""One training run put together: optimizer with LR groups, the strategy's phase plan, the
engine and its callbacks, and feature caching for head-only phases."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Optional

import torch

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.core.errors import ConfigError
from transfer_cli.data.bundle import TensorSplit
from transfer_cli.dist import distributed
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.acceleration import StepModuleBuilder, check_channels_last, to_channels_last
from transfer_cli.train.callbacks import Checkpointer, ConsoleProgress, EarlyStopping, MetricsLog, PhaseController
from transfer_cli.train.engine import Engine, EngineConfig, TrainState
from transfer_cli.train.features import FeatureStore, cached_features, can_cache
from transfer_cli.train.memory import estimate_memory, human, summary_line
from transfer_cli.train.optim import OPTIMIZERS, lr_scales, param_groups
from transfer_cli.train.precise_bn import resolve_batches
from transfer_cli.train.schedules import SCHEDULES
from transfer_cli.train.strategies import Phase, build_plan, plan_schedule

if TYPE_CHECKING:
    from transfer_cli.recipes.parts import Parts

SMOKE_STEPS = 3


def engine_config(exp: Experiment, monitor: str, higher_is_better: bool, smoke: bool) -> EngineConfig:
    train = exp.train
    return EngineConfig(
        epochs=1 if smoke else train.epochs, batch_size=exp.data.batch_size,
        max_steps=min(train.max_steps or SMOKE_STEPS, SMOKE_STEPS) if smoke else train.max_steps,
        grad_accum=train.grad_accum, clip_grad_norm=train.clip_grad_norm, precision=train.precision,
        eval_every_steps=None if smoke else train.eval_every_steps,
        monitor=monitor, monitor_higher_is_better=higher_is_better,
        monitor_min_delta=train.early_stopping.min_delta, seed=exp.seed,
    )


class Trainer:
    """Builds and runs the training of one run. `run=None` builds everything without writing
    (for `transfer validate`)."""

    def __init__(self, exp: Experiment, parts: "Parts", run: Optional[RunDir], console: Console,
                 smoke: bool = False, label: str = "train") -> None:
        self.exp, self.parts, self.console, self.model = exp, parts, console, parts.model
        cfg = engine_config(exp, parts.monitor, parts.monitor_higher_is_better, smoke)
        train = parts.data.split("train")
        steps_per_epoch = math.ceil(train.num_batches(cfg.batch_size) / cfg.grad_accum)
        self.total = cfg.max_steps or cfg.epochs * steps_per_epoch
        self.lora = exp.transfer.strategy == "lora"
        lora_names = {name for name, _ in self.model.named_parameters() if "lora_" in name}

        def make_schedule(length: int):  # each phase runs the configured schedule over its own steps
            return SCHEDULES.build(exp.schedule.name, exp.schedule.params,
                                   warmup_steps=exp.schedule.warmup_steps, total_steps=length)

        cfg.precise_bn = resolve_batches(exp.train.precise_bn, self.model, self.total)
        if smoke:
            cfg.precise_bn = min(cfg.precise_bn, SMOKE_STEPS)
        self.plan = build_plan(self.model, exp.transfer, steps_per_epoch, self.total, make_schedule, lora_names,
                               compress=smoke)
        self.cached = self._cache_decision(train)
        self.cache_seconds = 0.0
        check_channels_last(exp.train.channels_last, parts.data.input_shape)
        if exp.train.channels_last:
            to_channels_last(self.model)
        several = distributed.world().is_distributed
        if several:  # before FSDP wraps the groups (not estimated under torchrun)
            self._checkpoint_activations()
        self.fsdp = several and exp.train.distributed == "fsdp"
        if self.fsdp:  # before the optimizer: it must hold the sharded parameters
            distributed.shard_fully(self.model, self.model.layer_group_names())
        trains_ever = set().union(*(phase.trainable for phase in self.plan))
        self.trains_ever = frozenset(trains_ever)  # the parameters some phase trains (the run's counts)
        self.frozen_bf16 = exp.train.frozen_dtype == "bf16" and self._frozen_to_bf16(trains_ever.__contains__)
        scales = lr_scales(self.model.layer_group_names(), exp.transfer.backbone_lr_mult, exp.transfer.layer_decay)
        groups = param_groups(self.model, exp.optim.lr, exp.optim.weight_decay, scales, include=trains_ever.__contains__)
        try:
            self.optimizer = OPTIMIZERS.build(exp.optim.name, exp.optim.params, groups=groups, lr=exp.optim.lr)
        except ValueError as exc:  # torch's own checks of combinations (e.g. nesterov without momentum)
            raise ConfigError([f"optim.params: {exc} (optimizer '{exp.optim.name}')"]) from None
        self.memory: Optional[dict] = None
        if not several:  # measured before checkpointing wraps the groups, which the estimate accounts for
            self.memory = self._estimate_memory(train, cfg.batch_size, trains_ever.__contains__)
            self._checkpoint_activations()
        # order matters: the phase tags the record and early stopping marks the state before the
        # record is logged and the checkpoint saved, so a resumed run sees the same decision
        self.callbacks: list = [PhaseController(self.plan, self.model, exp.transfer.bn, console)]
        if exp.train.early_stopping.patience:
            self.callbacks.append(EarlyStopping(exp.train.early_stopping.patience, parts.monitor,
                                                exp.train.early_stopping.min_steps))
        if run is not None:
            self.callbacks += [MetricsLog(run), Checkpointer(run, exp.train.keep_last, parts.monitor,
                                                             self.export_weights, self.resume_state)]
        self.progress = ConsoleProgress(console, self.total, None if cfg.max_steps else cfg.epochs,
                                        parts.monitor, label)
        self.callbacks.append(self.progress)
        step_module = StepModuleBuilder(self.model, parts.device, compile=exp.train.compile,
                                        channels_last=exp.train.channels_last,
                                        distributed_mode=exp.train.distributed, warn=console.warn)
        self.engine = Engine(self.model, self.optimizer, plan_schedule(self.plan), parts.loss, parts.evaluator,
                             parts.device, cfg, self.callbacks, step_module)

    def _frozen_to_bf16(self, trains: Callable[[str], bool]) -> bool:
        from transfer_cli.models.frozen_dtype import keep_frozen_in_bf16

        saved = keep_frozen_in_bf16(self.model, trains)
        if saved:
            self.console.info(f"train.frozen_dtype: bf16: the parameters that never train are kept in bfloat16 "
                              f"({human(saved)} less)")
        else:
            self.console.warn(f"train.frozen_dtype: bf16, but no parameter stays frozen under strategy "
                              f"'{self.exp.transfer.strategy}' (every one trains in some phase): all stay float32")
        return bool(saved)

    def _checkpoint_activations(self) -> None:
        if self.exp.train.activation_checkpointing:
            how = self.model.enable_activation_checkpointing()
            self.console.info(f"activation checkpointing: {how}")

    def _estimate_memory(self, train: TensorSplit, batch_size: int, trains: Callable[[str], bool]) -> dict:
        """The memory estimate of a step (see train.memory), printed."""
        batch = next(iter(train.batches(batch_size, self.parts.device)))
        groups = self.model.checkpointing_units() if self.exp.train.activation_checkpointing else None
        estimate = estimate_memory(self.model, self.optimizer, trains, batch, self.parts.loss,
                                   self.exp.train.precision, groups)
        self.console.info(summary_line(estimate, groups is not None))
        return estimate

    def _cache_decision(self, train: TensorSplit) -> dict[str, bool]:
        """Which phases train the head on cached features."""
        setting = self.exp.transfer.cache_features
        allowed, why = can_cache(train, setting)
        if distributed.world().is_distributed:
            # the head would need its own DDP wrapper next to the model's: under torchrun the
            # head-only phases run through the whole model instead
            allowed, why = False, "not under torchrun (every rank would extract every feature)"
        head_only = [phase.name for phase in self.plan if phase.head_only]
        if setting is True and not (allowed and head_only):
            reason = why or f"no phase of strategy '{self.exp.transfer.strategy}' trains only the head"
            raise ConfigError([f"transfer.cache_features: true, but features cannot be cached: {reason}; "
                               f"use auto or false"])
        return {phase.name: allowed and phase.head_only for phase in self.plan}

    # ---- what checkpoints hold ---------------------------------------------------------------
    def export_weights(self) -> dict:
        """The weights a later stage loads: the plain architecture (LoRA merged)."""
        if self.lora:
            from transfer_cli.models.lora import merged_state_dict

            state = merged_state_dict(self.model, torch.float32 if self.frozen_bf16 else None)
        else:
            state = distributed.model_state(self.model)
        if self.frozen_bf16:  # checkpoints are float32 as always: a later stage loads them unchanged
            state = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in state.items()}
        return state

    def resume_state(self) -> Optional[dict]:
        return self.model.state_dict() if self.lora else None

    # ---- running -----------------------------------------------------------------------------
    def fit(self, train: TensorSplit, val: Optional[TensorSplit], state: TrainState) -> TrainState:
        """Run the plan from `state.step`; head-only phases run on cached features when allowed."""
        cache: dict[str, TensorSplit] = {}
        for cached, end in self._segments():
            if state.step >= end:
                continue
            if state.stop_reason:
                break
            if not cached:
                self.engine.fit(train, val, state, until=end)
                continue
            if not cache:
                tic = time.perf_counter()
                cache, extracted = self._features(train, val)
                self.cache_seconds = time.perf_counter() - tic
                if extracted:  # else each split said where it was read from
                    self.console.info(f"features cached: the backbone ran once over {len(train)} training samples")
            head = self._head_engine()
            try:
                head.fit(cache["train"], cache.get("val"), state, until=end)
            finally:
                self.engine.continue_from(head)  # the running loss goes on into the next phase
        return state

    def _segments(self) -> list[tuple[bool, int]]:
        """Consecutive phases merged by whether they run on cached features: (cached, end step)."""
        segments: list[tuple[bool, int]] = []
        for phase in self.plan:
            flag = self.cached[phase.name]
            if segments and segments[-1][0] == flag:
                segments[-1] = (flag, phase.end)
            else:
                segments.append((flag, phase.end))
        return segments

    def _features(self, train: TensorSplit, val: Optional[TensorSplit]) -> tuple[dict[str, TensorSplit], bool]:
        """The head's inputs per split, and whether the training split's were extracted (not read)."""
        size, device, precision = self.parts.evaluator.batch_size, self.parts.device, self.exp.train.precision
        splits = {"train": train, "val": val} if val is not None else {"train": train}
        folder = self.exp.transfer.feature_cache_dir
        store = FeatureStore(folder) if folder else None
        architecture = self.exp.model.model_dump(mode="json") if self.exp.model else {}
        found, extracted = {}, True
        for name, split in splits.items():
            found[name], read = cached_features(self.model, architecture, split, size, device, precision, store)
            if read:
                self.console.info(f"features of the {name} split read from {folder}")
                extracted = extracted and name != "train"
        return found, extracted

    def _head_engine(self) -> Engine:
        """An engine over the head alone, sharing the optimizer, scaler, schedule and callbacks."""
        evaluator = self.parts.evaluator.for_model(self.model.head)
        engine = Engine(self.model.head, self.optimizer, self.engine.schedule, self.parts.loss, evaluator,
                        self.parts.device, self.engine.cfg, self.callbacks)
        engine.continue_from(self.engine)
        return engine

    def add_callback(self, callback: Any) -> None:
        """A callback for every engine of this training (the head-only one too), after the others."""
        self.callbacks.append(callback)
        self.engine.callbacks.append(callback)

    def close(self) -> None:
        self.progress.close()


def phases_summary(plan: list[Phase]) -> list[dict]:
    return [{"name": p.name, "start_step": p.start, "end_step": p.end, "trainable_tensors": len(p.trainable)}
            for p in plan]
