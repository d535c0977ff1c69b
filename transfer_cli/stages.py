"""The stages: pretrain, finetune, evaluate (and validate, which builds everything and trains
nothing). Each reads like its recipe: build the parts, load weights, fit, evaluate, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from torch import nn

from transfer_cli import checkpoint as ckpt
from transfer_cli import distributed
from transfer_cli.breakdown import class_labels
from transfer_cli.config.schema import Experiment, TransferConfig
from transfer_cli.console import Console
from transfer_cli.data import DataBundle
from transfer_cli import outcomes
from transfer_cli.diagnostics import diagnose
from transfer_cli.engine import TrainState
from transfer_cli.errors import Interrupted, TransferError
from transfer_cli.evaluation import SplitResult
from transfer_cli.parts import Parts, RunOptions, build_parts
from transfer_cli.predictions import check_target as check_predictions_target
from transfer_cli.predictions import write_predictions
from transfer_cli.provenance import command_line, device_name, git_commit, now, versions
from transfer_cli.report import SCHEMA_VERSION, headline_table, write_report
from transfer_cli.resume import restore_training
from transfer_cli.rundir import RunDir
from transfer_cli.training import Trainer, phases_summary
from transfer_cli.transfer import load_exact, sha256_of


# ---- stages ----------------------------------------------------------------------------------
def pretrain(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    if exp.transfer != TransferConfig():
        console.warn("the transfer section is ignored by pretrain (it trains everything from random initialisation)")
        exp.transfer = TransferConfig()
    parts = build_parts(exp, opts)
    return train_and_report("pretrain", exp, parts, opts, console, lineage={"init": "random", "seed": exp.seed})


def finetune(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    """Start from pretrained weights, apply the strategy, fit; optionally a scratch baseline and
    several seeds (see finetuning.py)."""
    from transfer_cli.finetuning import finetune as run_finetune

    return run_finetune(exp, opts, console)


def evaluate(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    parts = build_parts(exp, opts, evaluating=True)
    weights, source_run = load_exact(parts.model, exp.eval.checkpoint, exp.transfer.keys)
    split = parts.data.split(exp.eval.split)
    path = run_path(exp, opts, "evaluate")
    run = check_run_dir(path, opts.mode if opts.mode != "resume" else "overwrite", resumable=False)
    exp.run_dir = str(path.absolute())
    predictions = check_predictions_target(opts.predictions, opts.overwrite) if opts.predictions else None
    lineage = {"checkpoint": exp.eval.checkpoint, "weights": str(weights), "sha256": sha256_of(weights),
               "source_run": str(source_run) if source_run else None}
    distributed.on_main(lambda: start_run(run, "evaluate", exp, parts, opts, lineage))
    tic = time.perf_counter()
    results = {exp.eval.split: parts.evaluator.run(split, detailed=True, keep_predictions=predictions is not None)}
    timings = {"eval_seconds": round(time.perf_counter() - tic, 3)}
    report = make_report("evaluate", exp, parts, results, lineage, timings, opts, checkpoint=None)
    if predictions is not None:
        result = results[exp.eval.split]
        write_predictions(predictions, parts.data.task, result.predictions, result.targets,
                          class_labels(parts.data.task, parts.data.num_outputs, parts.data.class_names),
                          parts.context.threshold)
        report["predictions"] = str(predictions)
    finish_run(run, report, console)
    console.show(headline_table(report))
    show_diagnostics(report, console)
    return report


def validate_only(exp: Experiment, stage: str, opts: RunOptions, console: Console) -> dict:
    """Build every part (data, model, loss, metrics, optimizer, weights) and train nothing."""
    from transfer_cli.finetuning import prepare_model

    parts = build_parts(exp, opts, evaluating=stage == "evaluate")
    if stage == "finetune":
        prepare_model(exp, parts, console)
    if stage == "evaluate":
        load_exact(parts.model, exp.eval.checkpoint, exp.transfer.keys)
    path = run_path(exp, opts, stage)
    steps = 0
    if stage != "evaluate":
        steps = Trainer(exp, parts, None, console).total
    if (path / "run.json").is_file():
        console.info(f"note: {path} already holds a run; {stage} would need --resume or --overwrite")
    else:
        RunDir.check(path, "new")
    summary = {"stage": stage, "run_dir": str(path), "data": data_info(exp, parts.data),
               "model": model_info(exp, parts.model), "steps": steps, "device": str(parts.device),
               "monitor": parts.monitor}
    console.info(f"ok: {stage} config is valid; {summary['model']['parameters']:,} parameters, "
                 f"{steps} steps, run dir {path}")
    return summary


# ---- running ---------------------------------------------------------------------------------
def run_path(exp: Experiment, opts: RunOptions, stage: str) -> Path:
    """--run-dir, else the config's run_dir, else runs/<config folder>/<config name>."""
    if opts.run_dir:
        return Path(opts.run_dir)
    if opts.from_run is not None:
        return opts.from_run / f"eval-{exp.eval.split}"
    if exp.run_dir:
        return Path(exp.run_dir)
    if opts.config_path is not None:
        parent = opts.config_path.parent.name
        return Path("runs") / parent / opts.config_path.stem if parent else Path("runs") / opts.config_path.stem
    return Path("runs") / stage


def check_run_dir(path: Path, mode: str, needed_bytes: int = 0, resumable: bool = True) -> RunDir:
    """RunDir.check, by rank 0 under torchrun (the other ranks stop with its error)."""
    distributed.on_main(lambda: RunDir.check(path, mode, needed_bytes, resumable=resumable) and None)  # type: ignore[arg-type]
    return RunDir(path)


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
        info = start_run(run, stage, exp, parts, opts, lineage, resumed_at=state.step if opts.resume else None)
        created.append(True)
        return info

    try:  # from the run's creation on, a stop (Ctrl-C while the ranks exchange, too) is recorded
        started = distributed.on_main(begin)
        run.update_run(strategy={"name": exp.transfer.strategy, "phases": phases_summary(trainer.plan)})
        console.info(f"{stage}: {data_line(parts.data)}; {model_line(exp, parts.model)}; {trainer.total} steps "
                     f"on {parts.device}; run dir {path}")
        tic = time.perf_counter()
        trainer.fit(train, val, state)
        train_seconds = time.perf_counter() - tic
        report = _final_report(stage, exp, parts, run, trainer, state, started, lineage, opts, train_seconds)
    except BaseException as exc:  # also a failure while evaluating or reporting: never left "running"
        if created or opts.resume:
            record_stop(run, state, exc)
        raise
    finally:
        trainer.close()
    console.show(headline_table(report))
    show_diagnostics(report, console)
    return report


def show_diagnostics(report: dict, console: Console) -> None:
    if report.get("smoke"):  # a few steps: every model looks collapsed and unconverged
        return
    for note in (report.get("diagnostics") or {}).get("warnings", []):
        console.warn(note)


def _final_report(stage: str, exp: Experiment, parts: Parts, run: RunDir, trainer: Trainer, state: TrainState,
                  started: dict, lineage: dict, opts: RunOptions, train_seconds: float) -> dict:
    """Evaluate the best weights on val and the eval split; write report.json/md and plots."""
    if state.stop_reason:
        trainer.console.info(state.stop_reason)
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
                         history=state.history)
    finish_run(run, report, trainer.console)
    return report


def keep_outcomes(run: RunDir, parts: Parts, split: str, result: SplitResult) -> None:
    """The eval split's per-sample decisions into the run dir, for paired comparisons; the
    probabilities are not kept in the report."""
    kept = outcomes.decisions(parts.data.task, result, parts.context.threshold)
    result.predictions = result.targets = None
    if kept is not None:
        outcomes.save(run, split, kept)


def record_stop(run: RunDir, state: Optional[TrainState], exc: BaseException) -> None:
    """run.json after a stop: interrupted or failed. Best effort: when the disk is full this
    write fails too, and the original error is the one to report."""
    fields: dict[str, Any] = {"status": "interrupted"}
    if not isinstance(exc, (Interrupted, KeyboardInterrupt)):
        error = str(exc) if isinstance(exc, TransferError) else f"{type(exc).__name__}: {exc}"
        fields = {"status": "failed", "error": error}
    try:
        if state is not None:
            fields["step"] = state.step
        run.update_run(ended_at=now(), **fields)
    except OSError:
        pass


def _load_best(run: RunDir, model: nn.Module) -> dict:
    """Put the best checkpoint's weights into the model (the weights a later stage starts from;
    under torchrun rank 0 reads them and sends them to the others)."""

    def read() -> tuple[dict, dict]:
        target = ckpt.alias_target(run.checkpoints, "best") or ckpt.alias_target(run.checkpoints, "last")
        meta = ckpt.read_meta(target)
        kind = "best" if target == ckpt.alias_target(run.checkpoints, "best") else "last"
        return ckpt.read_weights(target / ckpt.WEIGHTS), {
            "kind": kind, "path": str(target), "step": meta.get("step"), "monitor": meta.get("monitor"),
            "value": meta.get("value")}

    weights, checkpoint = distributed.on_main(read)
    distributed.load_model_state(model, weights)
    return checkpoint


def report_of_completed(run: RunDir, console: Console) -> dict:
    import json

    console.info(f"{run.path} is already completed; nothing to resume")
    report = distributed.on_main(lambda: json.loads((run.path / "report.json").read_text()))
    console.show(headline_table(report))
    return report


def start_run(run: RunDir, stage: str, exp: Experiment, parts: Optional[Parts], opts: RunOptions, lineage: dict,
              resumed_at: Optional[int] = None) -> dict:
    """Create the run dir with config.yaml and run.json (status running)."""
    previous = run.read_run() if resumed_at is not None else {}
    info = {
        "stage": stage, "status": "running", "command": " ".join(command_line()), "cwd": str(Path.cwd()),
        "started_at": previous.get("started_at", now()), "ended_at": None, "versions": versions(),
        "seed": exp.seed, "git_commit": git_commit(), "smoke": opts.smoke, "lineage": lineage,
        "processes": distributed.world().size,
        "distributed": exp.train.distributed if distributed.world().is_distributed else None,
    }
    if parts is not None:
        info.update(device=device_name(parts.device), data=data_info(exp, parts.data),
                    model=model_info(exp, parts.model))
    if resumed_at is not None:
        info["resumed"] = previous.get("resumed", []) + [{"at": now(), "step": resumed_at}]
        info["resumed_at"] = resumed_at
    files = {"config.yaml": run.config_text(exp.model_dump(mode="json")), "run.json": run.run_text(info)}
    run.create(opts.mode, files, checkpoints=stage != "evaluate")
    return info


def finish_run(run: RunDir, report: dict, console: Optional[Console] = None) -> None:
    write_report(run, report, console)
    run.update_run(status="completed", ended_at=now())


def make_report_header(stage: str, exp: Experiment, opts: RunOptions) -> dict:
    """The keys every report.json starts with (schema in README: "report.json")."""
    return {"schema_version": SCHEMA_VERSION, "stage": stage, "name": exp.name, "run_dir": exp.run_dir,
            "smoke": opts.smoke, "eval_split": exp.eval.split}


def make_report(stage: str, exp: Experiment, parts: Parts, results: dict[str, SplitResult], lineage: dict,
                timings: dict, opts: RunOptions, checkpoint: Optional[dict], stop_reason: Optional[str] = None,
                history: Optional[list[dict]] = None) -> dict:
    """The report.json content; plots are added when written, the gain by a baseline."""
    names = ["loss"] + list(exp.eval.metrics or [])
    split = exp.eval.split
    found = diagnose(stage, split, results[split].breakdown, history or [], parts.monitor,
                     parts.monitor_higher_is_better, stop_reason)
    return {
        **make_report_header(stage, exp, opts), "task": parts.data.task,
        "metric_names": list(exp.eval.metrics or []),
        "metrics": {split: {n: r.metrics[n] for n in names if n in r.metrics} for split, r in results.items()},
        "splits": {split: {"size": r.size, **(r.breakdown or {})} for split, r in results.items()},
        "monitor": parts.monitor, "monitor_mode": "max" if parts.monitor_higher_is_better else "min",
        "headline": {"metric": parts.monitor.split("/", 1)[1], "higher_is_better": parts.monitor_higher_is_better},
        "checkpoint": checkpoint, "stop_reason": stop_reason,
        "data": data_info(exp, parts.data), "lineage": lineage, "timings": timings,
        "transfer_gain": None, "predictions": None, "plots": {}, "diagnostics": found,
    }


def data_info(exp: Experiment, data: DataBundle) -> dict:
    return {"name": exp.data.name, "task": data.task, "num_outputs": data.num_outputs,
            "class_names": data.class_names, "input_shape": list(data.input_shape),
            "sizes": {name: len(split) for name, split in data.splits.items()}, **data.info}


def model_info(exp: Experiment, model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"name": exp.model.name, "parameters": total, "trainable": trainable}


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def data_line(data: DataBundle) -> str:
    sizes = "/".join(str(len(s)) for s in data.splits.values())
    return f"data {data.task} {data.num_outputs} outputs, {'/'.join(data.splits)} = {sizes}"


def model_line(exp: Experiment, model: nn.Module) -> str:
    info = model_info(exp, model)
    return f"model {info['name']} {info['parameters']:,} params ({info['trainable']:,} trainable)"
