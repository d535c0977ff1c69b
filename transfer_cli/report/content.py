"""The content of report.json (schema in README: "report.json") and the one-line summaries of the
data and the model that run.json and the console show."""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Optional

from torch import nn

from transfer_cli.config.schema import Experiment
from transfer_cli.data.bundle import DataBundle
from transfer_cli.eval.diagnostics import diagnose
from transfer_cli.eval.evaluation import SplitResult
from transfer_cli.report.headline import SCHEMA_VERSION

if TYPE_CHECKING:  # the recipes build these; the report only reads them
    from transfer_cli.recipes.parts import Parts, RunOptions


def make_report_header(stage: str, exp: Experiment, opts: RunOptions) -> dict:
    """The keys every report.json starts with (schema in README: "report.json")."""
    return {"schema_version": SCHEMA_VERSION, "stage": stage, "name": exp.name, "run_dir": exp.run_dir,
            "smoke": opts.smoke, "eval_split": exp.eval.split}


def make_report(stage: str, exp: Experiment, parts: Parts, results: dict[str, SplitResult], lineage: dict,
                timings: dict, opts: RunOptions, checkpoint: Optional[dict], stop_reason: Optional[str] = None,
                history: Optional[list[dict]] = None, precise_bn: int = 0) -> dict:
    """The report.json content; plots are added when written, the gain by a baseline."""
    names = ["loss"] + list(exp.eval.metrics or [])
    split = exp.eval.split
    found = diagnose(stage, split, results[split].breakdown, history or [], parts.monitor,
                     parts.monitor_higher_is_better, stop_reason, precise_bn)
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
            "input_dtype": input_dtype(data), "sizes": {name: len(split) for name, split in data.splits.items()}, **data.info}


def input_dtype(data: DataBundle) -> str:
    """The dtype of a sample (float32, or int64 for token ids), as a consumer must feed it."""
    split = next(iter(data.splits.values()))
    x = getattr(split, "x", None)  # in-memory splits; decoded images are float32
    return str(x.dtype).removeprefix("torch.") if x is not None else "float32"


def model_info(exp: Experiment, model: nn.Module, trains: Optional[Collection[str]] = None) -> dict:
    """Parameter counts; `trains`: the names that train in some phase of the run (without it,
    those that require grad now, which before training is all of a LoRA or linear-probe model)."""
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for name, p in named if (name in trains if trains is not None else p.requires_grad))
    return {"name": exp.model.name, "parameters": total, "trainable": trainable}


def data_line(data: DataBundle) -> str:
    sizes = "/".join(str(len(s)) for s in data.splits.values())
    return f"data {data.task} {data.num_outputs} outputs, {'/'.join(data.splits)} = {sizes}"


def model_line(exp: Experiment, model: nn.Module, trains: Optional[Collection[str]] = None) -> str:
    info = model_info(exp, model, trains)
    return f"model {info['name']} {info['parameters']:,} params ({info['trainable']:,} trainable)"
