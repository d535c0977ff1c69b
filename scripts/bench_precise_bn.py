#!/usr/bin/env python
"""When does precise BatchNorm matter, and what does it cost? The measurement behind
`train.precise_bn: auto` (README: "Precise BatchNorm").

A small `resnet` trained from scratch on the built-in images (motifs2d, 5 classes) for several
step budgets, each with the running statistics as training left them (`precise_bn: 0`) and
recomputed before every evaluation (`precise_bn: 50`), in the same run of this script. Prints per
budget and seed the eval-mode test accuracy both ways, the most-predicted class's share of the
test predictions (0.2 is balanced; 1.0 is one class for everything) and the training time ratio
(with / without), then the median over seeds.

    python scripts/bench_precise_bn.py [--steps 8 32 128 512] [--seeds 0 1] [--lr 0.01]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def config(steps: int, lr: float, seed: int) -> dict:
    return {"seed": seed,
            "data": {"name": "motifs2d", "params": {"task": "target", "n_train": 2000, "n_val": 500, "n_test": 1000},
                     "batch_size": 64},
            "model": {"name": "resnet", "params": {"widths": [16, 32], "blocks_per_stage": 1}},
            "optim": {"name": "adam", "lr": lr},
            "train": {"max_steps": steps, "eval_every_steps": max(steps // 4, 1), "monitor": "val/accuracy"}}


def run(folder: Path, steps: int, lr: float, seed: int, batches: int) -> dict:
    path = folder / f"s{steps}-seed{seed}-bn{batches}.yaml"
    path.write_text(yaml.safe_dump(config(steps, lr, seed)))
    out = subprocess.run([sys.executable, "-m", "transfer_cli", "pretrain", str(path), "--run-dir",
                          str(folder / path.stem), "--set", f"train.precise_bn={batches}", "--json", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    report = json.loads(out.stdout)
    return {"accuracy": report["metrics"]["test"]["accuracy"],
            "top_share": report["diagnostics"]["collapse"]["prediction_share"],
            "seconds": report["timings"]["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    print(f"resnet [16, 32] from scratch on motifs2d (2000 train, 1000 test), adam lr {args.lr}, batch 64")
    print(f"{'steps':>6} {'seed':>4}  {'acc off':>7} {'acc on':>7} {'gain':>7}  {'top off':>7} {'top on':>7}  time on/off")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            gains, ratios = [], []
            for seed in args.seeds:
                off, on = (run(Path(tmp), steps, args.lr, seed, b) for b in (0, 50))
                gains.append(on["accuracy"] - off["accuracy"])
                ratios.append(on["seconds"] / off["seconds"])
                print(f"{steps:>6} {seed:>4}  {off['accuracy']:>7.3f} {on['accuracy']:>7.3f} {gains[-1]:>+7.3f}  "
                      f"{off['top_share']:>7.2f} {on['top_share']:>7.2f}  {ratios[-1]:.2f}", flush=True)
            summary.append((steps, statistics.median(gains), statistics.median(ratios)))
    print("\nmedian over seeds: steps, accuracy gain of precise BN, training time ratio")
    for steps, gain, ratio in summary:
        print(f"{steps:>6}  {gain:+.3f}  {ratio:.2f}")


if __name__ == "__main__":
    main()
