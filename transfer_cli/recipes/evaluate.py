"""The evaluate stage: a checkpoint that must fit the model exactly, one split, a report (and
`--predictions`) in a run directory of its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.data.bundle import Split
from transfer_cli.dist import distributed
from transfer_cli.eval.breakdown import class_labels
from transfer_cli.eval.predictions import check_target as check_predictions_target
from transfer_cli.eval.predictions import write_predictions
from transfer_cli.recipes.lifecycle import check_run_dir, finish_run, run_path, show_diagnostics, start_run
from transfer_cli.recipes.parts import Parts, RunOptions, build_parts
from transfer_cli.report.content import make_report
from transfer_cli.report.headline import headline_table
from transfer_cli.runs.provenance import sha256_of
from transfer_cli.runs.rundir import RunDir
from transfer_cli.track.tracking import Tracking, stopped_status
from transfer_cli.weights.load import load_exact


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
    tracking = Tracking.open(run, exp, "evaluate", lineage, console)
    try:
        report = _evaluate_into(run, exp, parts, opts, split, lineage, predictions, console)
    except BaseException as exc:
        tracking.close(None, stopped_status(exc))
        raise
    tracking.close(report)
    console.show(headline_table(report))
    show_diagnostics(report, console)
    return report


def _evaluate_into(run: RunDir, exp: Experiment, parts: Parts, opts: RunOptions, split: Split, lineage: dict,
                   predictions: Optional[Path], console: Console) -> dict:
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
    return report
