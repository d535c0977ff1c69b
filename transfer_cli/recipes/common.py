"""Training with its final report, shared by pretrain, finetune and the scratch baseline: fit with
checkpoints (resumable), evaluate the best weights on val and the eval split, write the report."""

from __future__ import annotations

import time

from torch import nn

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.dist import distributed
from transfer_cli.eval import outcomes
from transfer_cli.eval.evaluation import SplitResult
from transfer_cli.recipes.lifecycle import (
    check_run_dir, finish_run, record_stop, report_of_completed, run_path, show_diagnostics, start_run,
)
from transfer_cli.recipes.parts import Parts, RunOptions
from transfer_cli.report.content import data_line, make_report, model_line
from transfer_cli.report.headline import headline_table
from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir
from transfer_cli.track.tracking import Tracking, stopped_status
from transfer_cli.train.engine import TrainState
from transfer_cli.train.resume import restore_training
from transfer_cli.train.trainer import Trainer, phases_summary
from transfer_cli.weights.files import read_weights


def train_and_report(stage: str, exp: Experiment, parts: Parts, opts: RunOptions, console: Console,
                     lineage: dict) -> dict:
    """Fit with checkpoints, evaluate the best weights on val and the eval split, write the report."""
    path = run_path(exp, opts, stage)
    run = check_run_dir(path, opts.mode, needed_bytes=3 * model_bytes(parts.model))
    train, val = parts.data.split("train"), parts.data.splits.get("val")
    trainer = Trainer(exp, parts, run, console, smoke=opts.smoke, label=stage)
    exp.run_dir = str(path.absolute())
    state = TrainState()
    # rank 0 looks (under torchrun the other machines may not see the run directory)
    if opts.resume and distributed.on_main((run.path / "config.yaml").is_file):
        state = restore_training(run, exp, trainer.engine, console, opts.smoke)
        if state is None:
            return report_of_completed(run, console)
    created = []  # whether this command's run.json exists: only then a stop is recorded in it

    def begin() -> dict:
        info = start_run(run, stage, exp, parts, opts, lineage, resumed_at=state.step if opts.resume else None,
                         trains=trainer.trains_ever)
        created.append(True)
        return info

    tracking = None
    try:  # from the run's creation on, a stop (Ctrl-C while the ranks exchange, too) is recorded
        started = distributed.on_main(begin)
        tracking = Tracking.open(run, exp, stage, lineage, console, resume_at=state.step if opts.resume else None)
        trainer.add_callback(tracking)
        for callback in opts.callbacks:
            trainer.add_callback(callback)
        run.update_run(strategy={"name": exp.transfer.strategy, "phases": phases_summary(trainer.plan)},
                       memory=trainer.memory)
        console.info(f"{stage}: {data_line(parts.data)}; {model_line(exp, parts.model, trainer.trains_ever)}; {trainer.total} steps "
                     f"on {parts.device}; run dir {path}")
        tic = time.perf_counter()
        trainer.fit(train, val, state)
        train_seconds = time.perf_counter() - tic
        report = _final_report(stage, exp, parts, run, trainer, state, started, lineage, opts, train_seconds)
    except BaseException as exc:  # also a failure while evaluating or reporting: never left "running"
        if created or opts.resume:
            record_stop(run, state, exc)
        if tracking is not None:
            tracking.close(None, stopped_status(exc))
        raise
    finally:
        trainer.close()
    tracking.close(report)
    console.show(headline_table(report))
    show_diagnostics(report, console)
    return report


def _final_report(stage: str, exp: Experiment, parts: Parts, run: RunDir, trainer: Trainer, state: TrainState,
                  started: dict, lineage: dict, opts: RunOptions, train_seconds: float) -> dict:
    """Evaluate the best weights on val and the eval split; write report.json/md and plots."""
    if state.stop_reason:
        trainer.console.info(state.stop_reason)
    if trainer.frozen_bf16:  # evaluated as every later stage computes: float32 on the checkpoint's weights
        from transfer_cli.models.frozen_dtype import to_float32

        to_float32(parts.model)
    if trainer.lora:
        from transfer_cli.models.lora import merge_lora

        merge_lora(parts.model)
    checkpoint = _load_best(run, parts.model)
    tic = time.perf_counter()
    val = parts.data.splits.get("val")
    reported = (["val"] if val is not None else []) + ([exp.eval.split] if exp.eval.split != "val" else [])
    results = {name: parts.evaluator.run(parts.data.split(name), detailed=True, keep_predictions=name == exp.eval.split)
               for name in reported}
    keep_outcomes(run, parts, exp.eval.split, results[exp.eval.split])
    steps_run = state.step - (started.get("resumed_at") or 0)
    timings = {"train_seconds": round(train_seconds, 3), "eval_seconds": round(time.perf_counter() - tic, 3),
               "steps": state.step, "steps_per_second": round(steps_run / train_seconds, 2) if train_seconds else None}
    if trainer.cache_seconds:
        timings["feature_cache_seconds"] = round(trainer.cache_seconds, 3)
    report = make_report(stage, exp, parts, results, lineage, timings, opts, checkpoint, state.stop_reason,
                         history=state.history, precise_bn=trainer.engine.cfg.precise_bn)
    finish_run(run, report, trainer.console)
    return report


def keep_outcomes(run: RunDir, parts: Parts, split: str, result: SplitResult) -> None:
    """The eval split's per-sample decisions into the run dir, for paired comparisons; the
    probabilities are not kept in the report."""
    kept = outcomes.decisions(parts.data.task, result, parts.context.threshold)
    result.predictions = result.targets = None
    if kept is not None:
        outcomes.save(run, split, kept)


def _load_best(run: RunDir, model: nn.Module) -> dict:
    """Put the best checkpoint's weights into the model (the weights a later stage starts from;
    under torchrun rank 0 reads them and sends them to the others)."""

    def read() -> tuple[dict, dict]:
        target = ckpt.alias_target(run.checkpoints, "best") or ckpt.alias_target(run.checkpoints, "last")
        meta = ckpt.read_meta(target)
        kind = "best" if target == ckpt.alias_target(run.checkpoints, "best") else "last"
        return read_weights(target / ckpt.WEIGHTS), {
            "kind": kind, "path": str(target), "step": meta.get("step"), "monitor": meta.get("monitor"),
            "value": meta.get("value")}

    weights, checkpoint = distributed.on_main(read)
    distributed.load_model_state(model, weights)
    return checkpoint


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
