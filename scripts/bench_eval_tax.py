#!/usr/bin/env python
"""Do evaluation metrics tax the training step? Times optimizer steps in three variants on the
same config, model initialisation and batches:

  plain     a hand-written PyTorch loop (forward, loss, backward, step), no evaluation
  engine    transfer's Engine evaluating every --eval-every steps with the full default metric set
  loss-only the same Engine, evaluating the loss only (no metrics)

Step times exclude the evaluations (each one is timed separately): metrics are updated only
while evaluating, so the engine's step time should match the plain loop, and the full metric
set should cost only at evaluation time. Reports medians over --repeats runs, and ratios,
of wall time and of process CPU time (on a shared machine the CPU time is the steadier one:
it does not count the time other processes hold the cores).

    python scripts/bench_eval_tax.py                       # quickstart pretrain config, CPU or GPU
    python scripts/bench_eval_tax.py --device cpu --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transfer_cli.config.resolve import load_experiment  # noqa: E402
from transfer_cli.core.console import Console  # noqa: E402
from transfer_cli.eval.metrics import build_metrics  # noqa: E402
from transfer_cli.recipes.components import registries  # noqa: E402
from transfer_cli.recipes.parts import RunOptions, build_parts, resolve_device  # noqa: E402
from transfer_cli.train.engine import BaseCallback, TrainState  # noqa: E402
from transfer_cli.train.trainer import Trainer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(since: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - since[0], cpu - since[1]


class StepTimer(BaseCallback):
    """Wall time between consecutive optimizer steps, leaving out intervals that held an evaluation."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.last, self.evaluated, self.steps = device, None, False, []

    def on_step_end(self, engine, state) -> None:
        sync(self.device)
        if self.last is not None and not self.evaluated:
            self.steps.append(elapsed(self.last))
        self.last, self.evaluated = clocks(), False

    def on_eval_end(self, engine, state, record, improved) -> None:
        self.evaluated = True


def timed_evaluator(evaluator, device: torch.device, durations: list):
    def run(split):
        sync(device)
        tic = clocks()
        result = evaluator(split)
        sync(device)
        durations.append(elapsed(tic))
        return result

    return run


def experiment(args: argparse.Namespace):
    sets = [f"train.max_steps={args.steps}", f"train.eval_every_steps={args.eval_every}",
            f"train.device={args.device}", "train.early_stopping.patience=null",
            "train.precise_bn=0"]  # the plain loop has no counterpart (its cost: scripts/bench_precise_bn.py)
    return load_experiment(Path(args.config), "pretrain", sets, registries())


def run_engine(args: argparse.Namespace, with_metrics: bool) -> dict:
    """The Engine that `transfer pretrain` builds, with only the step timer as callback (no
    metrics log or checkpoints: this measures the evaluations' metrics, not the disk)."""
    exp = experiment(args)
    parts = build_parts(exp, RunOptions())
    if not with_metrics:
        parts.evaluator.metrics = build_metrics([], parts.context)
    engine = Trainer(exp, parts, None, Console(quiet=True)).engine
    timer, evals = StepTimer(parts.device), []
    engine.callbacks = [timer]
    engine.evaluate = timed_evaluator(parts.evaluator, parts.device, evals)
    engine.fit(parts.data.split("train"), parts.data.split("val"), TrainState())
    return {"step": medians(timer.steps), "eval": medians(evals), "metrics": len(parts.evaluator.metrics)}


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds)."""
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def run_plain(args: argparse.Namespace) -> dict:
    exp = experiment(args)
    parts = build_parts(exp, RunOptions())
    model, loss_fn, device = parts.model, parts.loss, parts.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=exp.optim.lr, weight_decay=exp.optim.weight_decay)
    train, times, step, epoch = parts.data.split("train"), [], 0, 0
    model.train()
    last = None  # timed like the engine: from one step's end to the next, batch indexing included
    while step < args.steps:
        batches = train.batches(exp.data.batch_size, device, shuffle=True, seed=exp.seed, epoch=epoch)
        epoch += 1
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if last is not None:
                times.append(elapsed(last))
            last = clocks()
            step += 1
            if step >= args.steps:
                break
    return {"step": medians(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart" / "pretrain.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list] = {"plain": [], "engine": [], "loss-only": []}
    run_engine(argparse.Namespace(**{**vars(args), "steps": 5, "eval_every": 5}), with_metrics=True)  # warm-up, not counted
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every variant alike
        results["plain"].append(run_plain(args))
        results["engine"].append(run_engine(args, with_metrics=True))
        results["loss-only"].append(run_engine(args, with_metrics=False))
    median = {name: {key: tuple(statistics.median(r[key][i] for r in runs) for i in (0, 1)) if key != "metrics"
                     else runs[0][key] for key in runs[0]} for name, runs in results.items()}
    plain, full, bare = median["plain"]["step"], median["engine"], median["loss-only"]
    summary = {"device": str(resolve_device(args.device)), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "steps": args.steps, "eval_every": args.eval_every,
               "repeats": args.repeats, "metrics": full["metrics"]}
    print(f"device {summary['device']}, torch {summary['torch']}, {summary['threads']} threads; {args.steps} steps, "
          f"eval every {args.eval_every}; medians of {args.repeats} repeats; wall ms / CPU ms")
    for i, clock in enumerate(("wall", "cpu")):
        summary[clock] = {
            "step_ms": {"plain": plain[i] * 1e3, "engine_full_metrics": full["step"][i] * 1e3,
                        "engine_loss_only": bare["step"][i] * 1e3},
            "step_ratio_full_metrics_over_plain": full["step"][i] / plain[i],
            "step_ratio_full_metrics_over_loss_only": full["step"][i] / bare["step"][i],
            "eval_ms": {"full_metrics": full["eval"][i] * 1e3, "loss_only": bare["eval"][i] * 1e3},
            "eval_share_full_metrics": full["eval"][i] / (full["eval"][i] + args.eval_every * full["step"][i]),
        }
    w, c = summary["wall"], summary["cpu"]
    rows = [("step  plain PyTorch loop", "plain", "step_ms", ""),
            ("step  engine, full metrics", "engine_full_metrics", "step_ms", "step_ratio_full_metrics_over_plain"),
            ("step  engine, loss only", "engine_loss_only", "step_ms", None),
            (f"eval  {full['metrics']} metrics + loss", "full_metrics", "eval_ms", None),
            ("eval  loss only", "loss_only", "eval_ms", None)]
    for label, key, table, ratio in rows:
        extra = f"   full/plain {w[ratio]:.2f}x wall, {c[ratio]:.2f}x CPU" if ratio else ""
        print(f"  {label:<30} {w[table][key]:9.1f} / {c[table][key]:9.1f}{extra}")
    print(f"  full/loss-only step: {w['step_ratio_full_metrics_over_loss_only']:.2f}x wall, "
          f"{c['step_ratio_full_metrics_over_loss_only']:.2f}x CPU; evaluation share of training time with the full "
          f"set every {args.eval_every} steps: {w['eval_share_full_metrics']:.1%} wall, {c['eval_share_full_metrics']:.1%} CPU")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
