#!/usr/bin/env python
"""The README's strategy table: test accuracy on the built-in target task for a model trained
from scratch and for each transfer strategy, at k = 1, 5, 10, 50 labelled examples per class,
mean ± std over seeds, through the real CLI (configs/strategies/*.yaml).

    python scripts/strategy_table.py [--seeds 0,1,2] [--shots 1,5,10,50] [--out runs/strategy-table]

Needs the quickstart pretrain run (runs/quickstart/pretrain; made if missing). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from transfer_cli.cli import app  # noqa: E402

STRATEGIES = ["linear_probe", "lp_ft", "gradual", "lora", "full_with_baseline"]
# the scratch baseline's own budget: up to 3x the finetune's 20 epochs, stopped (not before the
# finetune's steps) when val/accuracy has not improved for 5 evaluations
OWN_BUDGET = "{epochs: 60, until_converged: true, patience: 5}"


def run(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(f"transfer {' '.join(args)} failed:\n{result.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shots", default="1,5,10,50")
    parser.add_argument("--out", default="runs/strategy-table")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="a subset (its rows only)")
    args = parser.parse_args()
    pretrained = ROOT / "runs/quickstart/pretrain"
    if not (pretrained / "report.json").is_file():
        run(["pretrain", str(ROOT / "configs/quickstart/pretrain.yaml"), "--run-dir", str(pretrained), "--quiet"])
    shots = [int(k) for k in args.shots.split(",")]
    table: dict[str, dict[int, str]] = {}
    tic = time.perf_counter()
    for k in shots:
        for strategy in args.strategies.split(","):
            out = Path(args.out) / f"k{k}" / strategy
            own = ["--set", f"transfer.baseline={OWN_BUDGET}"] if strategy == "full_with_baseline" else []
            run(["finetune", str(ROOT / f"configs/strategies/{strategy}.yaml"), "--init-from", str(pretrained),
                 "--seeds", args.seeds, "--run-dir", str(out), "--overwrite", "--quiet",
                 "--set", f"data.per_class={k}", *own])
            report = json.loads((out / "report.json").read_text())
            mean, std = report["metrics"]["test"]["accuracy"], report["metrics_std"]["test"]["accuracy"]
            name = "full" if strategy == "full_with_baseline" else strategy
            table.setdefault(name, {})[k] = f"{100 * mean:.1f} ± {100 * std:.1f}"
            if strategy == "full_with_baseline":
                for row, folder in (("scratch", "baseline"), ("scratch, own budget", "baseline-own")):
                    scratch = [s["metrics"]["test"]["accuracy"] for s in
                               (json.loads((Path(e["run_dir"]) / folder / "report.json").read_text())
                                for e in report["per_seed"])]
                    m = sum(scratch) / len(scratch)
                    sd = (sum((v - m) ** 2 for v in scratch) / max(len(scratch) - 1, 1)) ** 0.5
                    table.setdefault(row, {})[k] = f"{100 * m:.1f} ± {100 * sd:.1f}"
            print(f"k={k} {name}: {table[name][k]}", file=sys.stderr, flush=True)
    print(f"| test accuracy % (seeds {args.seeds}) | " + " | ".join(f"k = {k}" for k in shots) + " |")
    print("|---" * (len(shots) + 1) + "|")
    for name in ["scratch", "scratch, own budget", "linear_probe", "lp_ft", "gradual", "lora", "full"]:
        if name in table:
            print(f"| {name} | " + " | ".join(table[name][k] for k in shots) + " |")
    print(f"\n({time.perf_counter() - tic:.0f} s)")


if __name__ == "__main__":
    main()
