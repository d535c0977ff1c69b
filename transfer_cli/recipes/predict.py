"""The predict command: a run's weights (or a weights file and its config) label unlabelled
inputs read with the run's preprocessing; one CSV or JSON-lines file, written atomically."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError
from torch import nn

from transfer_cli.config.resolve import load_experiment
from transfer_cli.config.schema import Experiment, TrainConfig
from transfer_cli.core.console import Console
from transfer_cli.core.errors import ConfigError, DataError, UsageError
from transfer_cli.data.inputs import Inputs, read_inputs
from transfer_cli.eval.breakdown import class_labels
from transfer_cli.eval.inference import predict_split
from transfer_cli.eval.metrics import resolve_threshold
from transfer_cli.eval.predictions import check_target, csv_text, input_records, input_table, jsonl_text
from transfer_cli.models import MODELS
from transfer_cli.recipes.components import registries
from transfer_cli.recipes.parts import build_data, resolve_device
from transfer_cli.runs.provenance import device_name
from transfer_cli.runs.rundir import RunDir, write_atomic
from transfer_cli.weights.files import resolve_weights
from transfer_cli.weights.load import load_exact

FORMATS = ("csv", "jsonl")
DATA_FACTS = ("task", "num_outputs", "class_names", "input_shape")  # what run.json records of the training data


@dataclass
class PredictOptions:
    ref: str
    inputs: Path
    out: Path
    config: Optional[Path] = None
    format: str = "csv"
    batch_size: Optional[int] = None
    device: str = "auto"
    id_column: Optional[str] = None
    overwrite: bool = False


def predict(opts: PredictOptions, console: Console) -> dict:
    refuse_torchrun()
    if opts.format not in FORMATS:
        raise UsageError(f"--format: expected {' or '.join(FORMATS)}, got {opts.format!r}")
    out = check_target(opts.out, opts.overwrite, "--out")
    if out.exists() and out.resolve() == Path(opts.inputs).resolve():  # even with --overwrite: surely a slip
        raise UsageError(f"--out: {opts.out} is INPUTS itself; the predictions would replace the inputs: give "
                         f"another file name")
    exp, facts = experiment_of(opts)
    device = _device(opts.device)
    model = MODELS.build(exp.model.name, exp.model.params, input_shape=tuple(facts["input_shape"]),
                         num_outputs=facts["num_outputs"]).to(device)
    weights, run_dir = load_exact(model, exp.eval.checkpoint, exp.transfer.keys)
    warn_unfinished(run_dir, weights, console)
    inputs = read_inputs(exp.data.name, exp.data.params, str(opts.inputs), opts.id_column)
    check_shape(inputs, tuple(facts["input_shape"]), opts.inputs)
    tic = time.perf_counter()
    preds = _run(model, inputs, facts["task"], device, opts.batch_size or exp.data.eval_batch_size
                 or 2 * exp.data.batch_size, exp.train.precision, console)
    task = facts["task"]
    names = class_labels(task, facts["num_outputs"], facts["class_names"]) if task != "regression" else []
    threshold = resolve_threshold(task, exp.eval.threshold)
    if opts.format == "csv":
        text = csv_text(*input_table(task, preds, names, threshold, inputs.label))
    else:
        text = jsonl_text(input_records(task, preds, names, threshold, inputs.label))
    write_atomic(out, text)
    seconds = round(time.perf_counter() - tic, 3)
    console.info(f"predicted {len(preds)} inputs ({task}) -> {out} in {seconds:.2f} s")
    return {"rows": len(preds), "task": task, "classes": names or None, "output": str(out), "format": opts.format,
            "inputs": str(Path(opts.inputs).absolute()), "weights": str(weights),
            "run": str(run_dir.absolute()) if run_dir else None, "device": device_name(device), "seconds": seconds}


def _device(name: str) -> torch.device:
    """--device, checked as train.device is, its errors said of the flag."""
    try:
        TrainConfig(device=name)
    except ValidationError:
        raise UsageError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    try:
        return resolve_device(name)
    except ConfigError as exc:
        raise UsageError("--device: " + exc.problems[0].split(": ", 1)[-1]) from None


def warn_unfinished(run_dir: Optional[Path], weights: Path, console: Console) -> None:
    """Labels from a run that did not complete (still running, failed, interrupted) are the
    checkpoint it had reached: said, so no one mistakes them for the finished model's."""
    status = RunDir(run_dir).read_run().get("status") if run_dir is not None else None
    if status not in (None, "completed"):
        console.warn(f"{run_dir} is {status}, not completed: predicting with the checkpoint it had reached "
                     f"({weights.parent.name}); finish it (--resume) for the final weights")


def refuse_torchrun() -> None:
    """Predicting is one process's work; read from the environment, as torchrun sets it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        raise UsageError(f"transfer predict runs in one process, but torchrun started {size} (WORLD_SIZE={size}); "
                         f"run it without torchrun (it uses one GPU when there is one)")


def experiment_of(opts: PredictOptions) -> tuple[Experiment, dict[str, Any]]:
    """The run's resolved config and what its training data was (task, classes, input shape):
    from a run directory's config.yaml and run.json, or from `--config` with a weights file
    (then the config's data is built to learn them)."""
    _weights, run_dir = resolve_weights(opts.ref)
    if run_dir is not None:
        if opts.config is not None:
            raise UsageError(f"--config goes with a weights file; {run_dir} is a run directory, whose own "
                             f"config.yaml is used: drop --config")
        exp = load_experiment(run_dir, "evaluate", [], registries(), checkpoint=opts.ref)
        facts = RunDir(run_dir).read_run().get("data") or {}
        if all(facts.get(key) is not None or key == "class_names" for key in DATA_FACTS):
            return exp, facts
    elif opts.config is None:
        raise UsageError(f"{opts.ref} is a weights file: predict needs the config that trained it, for the model "
                         f"and the preprocessing; add --config CONFIG.yaml (e.g. that run's config.yaml), or give "
                         f"the run directory")
    else:
        exp = load_experiment(opts.config, "evaluate", [], registries(), checkpoint=opts.ref)
    data = build_data(exp)  # also records the fitted preprocessing in exp.data.params
    return exp, {"task": data.task, "num_outputs": data.num_outputs, "class_names": data.class_names,
                 "input_shape": list(data.input_shape)}


def check_shape(inputs: Inputs, expected: tuple[int, ...], path: Path) -> None:
    got = tuple(inputs.split.sample_shape)
    if got != expected:
        raise DataError(f"INPUTS ({path}): samples of shape {got}, but the model takes {expected} (the shape of "
                        f"the run's training samples); give inputs of that shape")


def _run(model: nn.Module, inputs: Inputs, task: str, device: torch.device, batch_size: int, precision: str,
         console: Console) -> torch.Tensor:
    """The model over the inputs: a progress bar on a terminal, a plain line per tenth elsewhere."""
    total = len(inputs.split)
    step = max(1, total // 10)
    shown = [0]
    with console.progress(total, "predict") as bar:
        def on_batch(done: int) -> None:
            bar.update(done)
            if not console.fancy and (done - shown[0] >= step or done == total) and total > batch_size:
                shown[0] = done
                console.info(f"predict {done}/{total} inputs")

        return predict_split(model, inputs.split, task, device, batch_size, precision, on_batch)
