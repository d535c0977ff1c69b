"""The finetune stage: pretrained weights + strategy, and the honest answer to "did pretraining
help?": a scratch baseline with the same architecture, data, budget and seed, the transfer gain,
and repeats over seeds with mean and standard deviation."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from transfer_cli.config.schema import Experiment, TransferConfig
from transfer_cli.core.console import Console, format_value
from transfer_cli.dist import distributed
from transfer_cli.recipes.common import train_and_report
from transfer_cli.recipes.lifecycle import check_run_dir, record_stop, report_of_completed, run_path, start_run
from transfer_cli.recipes.parts import Parts, RunOptions, build_parts, resolve_device
from transfer_cli.report.content import make_report_header
from transfer_cli.report.headline import headline_table
from transfer_cli.report.write import write_report
from transfer_cli.runs.provenance import now
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.resume import check_same_config
from transfer_cli.weights.load import load_initial_weights


def finetune(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    if exp.transfer.seeds:
        return over_seeds(exp, opts, console)
    report = finetune_once(exp, opts, console)
    if exp.transfer.baseline == "scratch":
        report = with_baseline(exp, opts, console, report)
    return report


def finetune_once(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    parts = build_parts(exp, opts)
    lineage = prepare_model(exp, parts, console)
    return train_and_report("finetune", exp, parts, opts, console, lineage)


def prepare_model(exp: Experiment, parts: Parts, console: Console) -> dict:
    """Load the initial weights (unless the model brought its own) and add LoRA adapters;
    returns the lineage recorded in run.json."""
    tcfg = exp.transfer
    if tcfg.init_from is None:  # the model loaded its own pretrained weights (e.g. hf_encoder)
        lineage = {"init_from": None, **parts.model.pretrained_lineage()}
        console.info(f"init: pretrained weights of {lineage['pretrained']}")
    else:
        load = load_initial_weights(parts.model, tcfg.init_from, head=tcfg.head, strict=tcfg.strict,
                                    keys=tcfg.keys)
        console.info(f"init: {load.summary()}")
        lineage = {"init_from": tcfg.init_from, "weights": load.weights, "sha256": load.sha256,
                   "load_report": load.to_dict()}
    if tcfg.strategy == "lora":
        from transfer_cli.models.lora import add_lora

        adapted = add_lora(parts.model, tcfg.lora.rank, tcfg.lora.alpha, tcfg.lora.dropout, tcfg.lora.targets)
        console.info(f"lora: rank {tcfg.lora.rank} adapters on {len(adapted)} modules")
    return lineage


# ---- scratch baseline --------------------------------------------------------------------------
def with_baseline(exp: Experiment, opts: RunOptions, console: Console, report: dict) -> dict:
    """Train the same architecture from random initialisation (same data, budget, seed) into
    `<run>/baseline`, then add both results and the gain to the finetune report."""
    run = RunDir(Path(report["run_dir"]))
    base_exp = exp.model_copy(deep=True)
    base_exp.transfer = TransferConfig()
    base_dir = run.path / "baseline"
    base_opts = replace(opts, run_dir=str(base_dir), config_path=None, overwrite=False,
                        resume=opts.resume and distributed.on_main(base_dir.exists))
    console.info(f"baseline: the same model from scratch -> {base_dir}")
    parts = build_parts(base_exp, base_opts)
    parts.model.reinitialize_pretrained()  # e.g. an hf_encoder: its own pretrained weights are not scratch
    base = train_and_report("baseline", base_exp, parts, base_opts, console,
                            lineage={"init": "random", "seed": exp.seed, "baseline_of": str(run.path)})
    report = add_gain(report, base)
    write_report(run, report, console)
    console.info(gain_line(report))
    return report


def add_gain(report: dict, base: dict) -> dict:
    """report + {"baseline": ..., "transfer_gain": {metric: finetuned - scratch}} on the eval split."""
    split = report["eval_split"]
    ours, theirs = report["metrics"][split], base["metrics"][split]
    gain = {name: ours[name] - theirs[name] for name in ours if name in theirs}
    headline, higher = report["headline"]["metric"], report["headline"]["higher_is_better"]
    signed = gain[headline] if higher else -gain[headline]
    return {**report, "baseline": {"run_dir": base["run_dir"], "metrics": base["metrics"]},
            "transfer_gain": gain, "negative_transfer": signed < 0}


def gain_line(report: dict) -> str:
    split, headline = report["eval_split"], report["headline"]["metric"]
    ours = report["metrics"][split][headline]
    theirs = report["baseline"]["metrics"][split][headline]
    gain = report["transfer_gain"][headline]
    verdict = ("NEGATIVE TRANSFER: the scratch baseline is better" if report["negative_transfer"]
               else "pretraining helped")
    return (f"transfer gain on {split}: {headline} {gain:+.4f} (finetuned {format_value(ours)} vs scratch "
            f"{format_value(theirs)}): {verdict}")


# ---- seeds -------------------------------------------------------------------------------------
def over_seeds(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    """Repeat the finetune (and baseline) per seed into `<run>/seed-N/`; report mean and std."""
    path = run_path(exp, opts, "finetune")
    # under torchrun the ranks must be in their process group before rank 0 alone checks and
    # creates the parent dir (otherwise each rank checks it for itself, racing rank 0)
    distributed.init(resolve_device(exp.train.device))
    run = check_run_dir(path, opts.mode)
    seeds = list(exp.transfer.seeds)
    exp.run_dir = str(path.absolute())
    if opts.resume:  # same rules as a single run: the same config, and a completed run stays as it is
        def completed() -> bool:  # by rank 0: under torchrun the other machines may not see the run directory
            check_same_config(run, exp, opts.smoke)
            return run.read_run().get("status") == "completed"

        if distributed.on_main(completed):
            return report_of_completed(run, console)
    header = make_report_header("finetune", exp, opts)
    distributed.on_main(lambda: start_run(run, "finetune", exp, None, opts,
                                          lineage={"init_from": exp.transfer.init_from},
                                          resumed_at=0 if opts.resume else None))
    try:
        reports = [finetune(*_seed_run(exp, opts, seed, path), console) for seed in seeds]
    except BaseException as exc:
        record_stop(run, None, exc)
        raise
    # the keys of a single run's report that a mean over runs does not have are null
    empty = {"splits": {}, "checkpoint": None, "lineage": {"init_from": exp.transfer.init_from}, "timings": {},
             "stop_reason": None, "predictions": None, "transfer_gain": None}
    report = {**header, **empty, **aggregate(reports, seeds)}
    write_report(run, report, console)
    run.update_run(status="completed", ended_at=now(), seeds=seeds)
    console.info(f"finetune over seeds {seeds}: mean of {len(seeds)} runs")
    console.show(headline_table(report))
    if report.get("transfer_gain"):
        console.info("transfer gain (mean ± std over seeds): " + ", ".join(
            f"{k} {v:+.4f} ± {report['transfer_gain_std'][k]:.4f}" for k, v in report["transfer_gain"].items()))
    return report


def _seed_run(exp: Experiment, opts: RunOptions, seed: int, parent: Path) -> tuple[Experiment, RunOptions]:
    child = exp.model_copy(deep=True)
    child.seed = seed
    child.transfer.seeds = None
    child_dir = parent / f"seed-{seed}"
    return child, replace(opts, run_dir=str(child_dir), config_path=None, overwrite=False,
                          resume=opts.resume and distributed.on_main(child_dir.exists))


def aggregate(reports: list[dict], seeds: list[int]) -> dict:
    """Mean and sample standard deviation of every metric (and gain) over the per-seed reports."""
    def mean_std(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    out: dict[str, Any] = {"seeds": seeds, "per_seed": [
        {"seed": s, "run_dir": r["run_dir"], "metrics": r["metrics"], "transfer_gain": r.get("transfer_gain")}
        for s, r in zip(seeds, reports)]}
    first = reports[0]
    out["metrics"], out["metrics_std"] = {}, {}
    for split, values in first["metrics"].items():
        pairs = {m: mean_std([r["metrics"][split][m] for r in reports]) for m in values}
        out["metrics"][split] = {m: p[0] for m, p in pairs.items()}
        out["metrics_std"][split] = {m: p[1] for m, p in pairs.items()}
    if all(r.get("transfer_gain") for r in reports):
        pairs = {m: mean_std([r["transfer_gain"][m] for r in reports]) for m in first["transfer_gain"]}
        out["transfer_gain"] = {m: p[0] for m, p in pairs.items()}
        out["transfer_gain_std"] = {m: p[1] for m, p in pairs.items()}
        out["negative_transfer_seeds"] = [s for s, r in zip(seeds, reports) if r["negative_transfer"]]
    for key in ("eval_split", "headline", "data", "task", "metric_names", "monitor", "monitor_mode"):
        out[key] = first.get(key)
    return out
