"""The finetune stage: pretrained weights + strategy, and the honest answer to "did pretraining
help?": a scratch baseline with the same architecture, data, budget and seed, the transfer gain,
and repeats over seeds with mean and standard deviation."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from transfer_cli.config.schema import BaselineConfig, Experiment, TransferConfig
from transfer_cli.core.console import Console
from transfer_cli.dist import distributed
from transfer_cli.eval import outcomes
from transfer_cli.eval.diagnostics import gain_caveats
from transfer_cli.eval.significance import over_seeds as spread_over_seeds
from transfer_cli.eval.significance import paired_t_test
from transfer_cli.recipes.common import train_and_report
from transfer_cli.recipes.lifecycle import check_run_dir, record_stop, report_of_completed, run_path, start_run
from transfer_cli.recipes.parts import Parts, RunOptions, build_parts, resolve_device
from transfer_cli.report.content import make_report_header
from transfer_cli.report.gains import gain_line, seeds_gain_line
from transfer_cli.report.headline import headline_table
from transfer_cli.report.write import write_report
from transfer_cli.runs.provenance import now
from transfer_cli.runs.rundir import RunDir
from transfer_cli.track.tracking import Tracking, stopped_status, track_report
from transfer_cli.train.resume import check_same_config
from transfer_cli.weights.load import load_initial_weights


OWN_BUDGET_STRETCH = 4  # until_converged without epochs/max_steps: at most this many times the finetune's budget


def finetune(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    if exp.transfer.seeds:
        return over_seeds(exp, opts, console)
    report = finetune_once(exp, opts, console)
    if exp.transfer.baseline != "none":
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
BUDGETS = {"equal_budget": "baseline", "own_budget": "baseline-own"}  # kind -> folder under the run


def with_baseline(exp: Experiment, opts: RunOptions, console: Console, report: dict) -> dict:
    """Train the same architecture from random initialisation (same data and seed) into
    `<run>/baseline` with the finetune's budget and/or `<run>/baseline-own` with one of its own,
    then add the results, the gains and their statistics to the finetune report."""
    run = RunDir(Path(report["run_dir"]))
    spec = exp.transfer.baseline
    own = spec if isinstance(spec, BaselineConfig) else None
    kinds = (["equal_budget"] if own is None or own.equal_budget else []) + (["own_budget"] if own else [])
    steps = (report.get("timings") or {}).get("steps") or 0
    bases = {kind: train_baseline(exp, opts, console, run.path / BUDGETS[kind], own if kind == "own_budget" else None,
                                  steps) for kind in kinds}
    report = add_gains(report, bases, exp)
    write_report(run, report, console)
    track_report(run, exp, "finetune", report, console)
    for kind in kinds:
        say = console.info if report["gains"][kind]["trustworthy"] else console.warn
        say(gain_line(report, kind))
    return report


def baseline_experiment(exp: Experiment, own: Optional[BaselineConfig], finetune_steps: int = 0) -> Experiment:
    """The scratch baseline's config: the finetune's, without transfer, with its own budget when given
    (until_converged: early-stopped, but never before the finetune's own number of steps)."""
    base = exp.model_copy(deep=True)
    base.transfer = TransferConfig()
    if own is None:
        return base
    if own.max_steps is not None:
        base.train.max_steps = own.max_steps
    elif own.epochs is not None:
        base.train.epochs, base.train.max_steps = own.epochs, None
    else:  # the finetune's budget, stretched when the baseline may train until it converges
        stretch = OWN_BUDGET_STRETCH if own.until_converged else 1
        base.train.epochs *= stretch
        base.train.max_steps = exp.train.max_steps * stretch if exp.train.max_steps else None
    base.optim.lr = own.lr or exp.optim.lr
    if own.until_converged:
        base.train.early_stopping.patience = own.patience
        base.train.early_stopping.min_steps = finetune_steps
    return base


def train_baseline(exp: Experiment, opts: RunOptions, console: Console, base_dir: Path,
                   own: Optional[BaselineConfig], finetune_steps: int = 0) -> dict:
    base_exp = baseline_experiment(exp, own, finetune_steps)
    base_opts = replace(opts, run_dir=str(base_dir), config_path=None, overwrite=False,
                        resume=opts.resume and distributed.on_main(base_dir.exists))
    budget = "the finetune's budget" if own is None else "a budget of its own"
    console.info(f"baseline: the same model from scratch with {budget} -> {base_dir}")
    parts = build_parts(base_exp, base_opts)
    parts.model.reinitialize_pretrained()  # e.g. an hf_encoder: its own pretrained weights are not scratch
    base = train_and_report("baseline", base_exp, parts, base_opts, console,
                            lineage={"init": "random", "seed": exp.seed, "baseline_of": str(base_dir.parent),
                                     "budget": "own" if own else "equal"})
    base["budget"] = {"epochs": base_exp.train.epochs, "max_steps": base_exp.train.max_steps,
                      "steps": (base.get("timings") or {}).get("steps"), "lr": base_exp.optim.lr,
                      "until_converged": bool(own and own.until_converged)}
    return base


def add_gains(report: dict, bases: dict[str, dict], exp: Experiment) -> dict:
    """report + per baseline kind: the gain in every metric on the eval split, the paired
    statistics of the headline metric and whether the gain is to be trusted. `transfer_gain`,
    `baseline` and `negative_transfer` describe the equal-budget baseline when it ran (else the own)."""
    split = report["eval_split"]
    headline, higher = report["headline"]["metric"], report["headline"]["higher_is_better"]
    gains = {}
    for kind, base in bases.items():
        ours, theirs = report["metrics"][split], base["metrics"][split]
        gain = {name: ours[name] - theirs[name] for name in ours if name in theirs}
        reasons = gain_caveats(report.get("diagnostics") or {}, base.get("diagnostics") or {})
        gains[kind] = {"split": split, "metric": headline, "value": gain[headline], "finetuned": ours[headline],
                       "scratch": theirs[headline], "all": gain, "baseline_run": base["run_dir"],
                       "budget": base.get("budget"), "negative_transfer": (gain[headline] if higher else -gain[headline]) < 0,
                       "significance": paired_statistics(report, base, exp), "trustworthy": not reasons,
                       "reasons": reasons}
    primary = gains.get("equal_budget") or gains["own_budget"]
    first = bases.get("equal_budget") or bases["own_budget"]
    return {**report, "transfer_gain": primary["all"], "negative_transfer": primary["negative_transfer"],
            "baseline": {"run_dir": first["run_dir"], "metrics": first["metrics"],
                         "diagnostics": first.get("diagnostics")},
            "baselines": {kind: {"run_dir": b["run_dir"], "metrics": b["metrics"], "diagnostics": b.get("diagnostics"),
                                 "budget": b.get("budget")} for kind, b in bases.items()},
            "gains": gains}


def paired_statistics(report: dict, base: dict, exp: Experiment) -> Optional[dict]:
    """McNemar / paired t and the bootstrap interval of the finetuned against the baseline on the
    eval split's samples (None when either run kept no per-sample decisions)."""
    split = report["eval_split"]
    ours, theirs = outcomes.load(report["run_dir"], split), outcomes.load(base["run_dir"], split)
    if ours is None or theirs is None:
        return None
    metric = report["headline"]["metric"]
    if report["task"] == "regression" and metric == "loss" and exp.loss.name != "mse":
        metric = "mse"  # the per-sample statistics know the squared error, not every loss
    return outcomes.compare(report["task"], metric, ours, theirs, report["data"]["num_outputs"], exp.seed)


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
    tracking = Tracking.open(run, exp, "finetune", {"init_from": exp.transfer.init_from}, console)
    tracking.flush()  # its run id, before the seeds' runs name it as their parent
    try:
        reports = [finetune(*_seed_run(exp, opts, seed, path), console) for seed in seeds]
    except BaseException as exc:
        record_stop(run, None, exc)
        tracking.close(None, stopped_status(exc))
        raise
    # the keys of a single run's report that a mean over runs does not have are null
    empty = {"splits": {}, "checkpoint": None, "lineage": {"init_from": exp.transfer.init_from}, "timings": {},
             "stop_reason": None, "predictions": None, "transfer_gain": None}
    report = {**header, **empty, **aggregate(reports, seeds)}
    write_report(run, report, console)
    run.update_run(status="completed", ended_at=now(), seeds=seeds)
    tracking.close(report)
    console.info(f"finetune over seeds {seeds}: mean of {len(seeds)} runs")
    console.show(headline_table(report))
    if report.get("transfer_gain"):
        console.info("transfer gain (mean ± std over seeds): " + ", ".join(
            f"{k} {v:+.4f} ± {report['transfer_gain_std'][k]:.4f}" for k, v in report["transfer_gain"].items()))
    for kind, g in (report.get("gains") or {}).items():
        say = console.info if g["trustworthy"] else console.warn
        say(seeds_gain_line(g, kind))
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
    if all(r.get("gains") for r in reports):
        out["gains"] = {kind: gains_over_seeds([r["gains"][kind] for r in reports], seeds,
                                               first["headline"]["higher_is_better"]) for kind in first["gains"]}
    for key in ("eval_split", "headline", "data", "task", "metric_names", "monitor", "monitor_mode"):
        out[key] = first.get(key)
    return out


def gains_over_seeds(per_seed: list[dict], seeds: list[int], higher_is_better: bool) -> dict:
    """One baseline kind's gains of every seed: their spread (t interval, share positive) and the
    reasons any seed's gain is not to be trusted."""
    values = [g["value"] for g in per_seed]
    spread = spread_over_seeds(values, higher_is_better)
    reasons = [f"seed {seed}: {why}" for seed, g in zip(seeds, per_seed) for why in g["reasons"]]
    first = per_seed[0]
    tested = None if len(values) < 2 else {"test": "one_sample_t_over_seeds", "metric": first["metric"],
                                           "p_value": paired_t_test(torch.tensor(values)),
                                           "interval": spread["interval"], "level": spread["level"]}
    return {"split": first["split"], "metric": first["metric"], "value": spread["mean"], "per_seed": values,
            "over_seeds": spread, "negative_transfer": (spread["mean"] if higher_is_better else -spread["mean"]) < 0,
            "significance": tested,
            "trustworthy": not reasons, "reasons": reasons}
