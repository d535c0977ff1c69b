#!/usr/bin/env python
"""What does a command cost before it does any work?

Runs each probe in a fresh process several times and prints the median [min-max] seconds:

  transfer --help             the CLI alone (torch is imported lazily, so this stays fast)
  import torch                the floor of every command that trains or evaluates
  import torch, torchmetrics  the whole library: matplotlib, scipy and (when installed) transformers
  our metrics                 transfer_cli.eval.metrics: torch and only the parts of torchmetrics used
  first optimizer             torch imports its compiler stack (torch._dynamo) on the first optimizer
  pretrain: first step        `transfer pretrain configs/quickstart/pretrain.yaml --smoke`, from the
                              start of the process to the engine's first training step, and to its end,
                              with the breakdown of the whole command into its phases

    python scripts/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run in the child: seconds from its first line to each mark (on stderr), from which the breakdown
# of the smoke pretrain is taken; wrapping the functions costs microseconds
FIRST_STEP_PROBE = """
import sys, time
start = time.perf_counter()
def mark(name):
    print(f"MARK {name} {time.perf_counter() - start:.4f}", file=sys.stderr)
def wrap(owner, attribute, before=None, after=None):
    original = getattr(owner, attribute)
    def wrapped(*args, **kwargs):
        if before: mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            if after: mark(after)
    setattr(owner, attribute, wrapped)
from transfer_cli.recipes import pretrain as recipe
from transfer_cli.report import write
from transfer_cli.train import engine
wrap(recipe, "pretrain", before="recipe")
wrap(recipe, "build_parts", after="parts")
wrap(engine.Engine, "fit", before="first_step", after="fit_end")
wrap(write, "draw_plots", before="pictures", after="pictures_end")
from transfer_cli.cli import main
sys.argv = ["transfer", *sys.argv[1:]]
main()
"""

# the breakdown: from one mark to the next (the last phase ends with the process)
PHASES = [
    ("start", "recipe", "Python, imports, CLI, config"),
    ("recipe", "parts", "data and model (data forked; torch._dynamo)"),
    ("parts", "first_step", "optimizer, memory estimate, run dir"),
    ("first_step", "fit_end", "3 steps, an evaluation, a checkpoint"),
    ("fit_end", "pictures", "final evaluation, reports"),
    ("pictures", "pictures_end", "pictures (2 processes)"),
    ("pictures_end", "end", "exit, and the interpreter's start"),
]


def marks(output: str, total: float) -> dict[str, float]:
    found = {line.split()[1]: float(line.split()[2]) for line in output.splitlines() if line.startswith("MARK ")}
    return {"start": 0.0, **found, "end": total}


IMPORT_PROBES = {
    "import torch": "import torch",
    "import torch, torchmetrics": "import torch, torchmetrics",
    "our metrics (torch, lean torchmetrics)": "import transfer_cli.eval.metrics",
    "first optimizer (after import torch)":
        "import torch, time; t = time.perf_counter(); torch.optim.Adam(torch.nn.Linear(2, 2).parameters()); "
        "print(f'SECONDS {time.perf_counter() - t:.3f}')",
}


def wall(command: list[str], cwd: Path) -> tuple[float, str]:
    tic = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - tic, done.stdout + done.stderr


def tagged(output: str, tag: str) -> float:
    return next(float(line.split()[1]) for line in output.splitlines() if line.startswith(tag))


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            record("transfer --help", wall([sys.executable, "-m", "transfer_cli", "--help"], ROOT)[0])
            for name, code in IMPORT_PROBES.items():
                seconds, output = wall([sys.executable, "-c", code], ROOT)
                record(name, tagged(output, "SECONDS") if "SECONDS" in output else seconds)
            run_dir = Path(tmp) / f"run-{repeat}"
            seconds, output = wall([sys.executable, "-c", FIRST_STEP_PROBE, "pretrain",
                                    str(ROOT / "configs/quickstart/pretrain.yaml"), "--smoke", "--quiet",
                                    "--run-dir", str(run_dir)], Path(tmp))
            at = marks(output, seconds)
            record("pretrain --smoke: first training step", at["first_step"])
            record("pretrain --smoke: whole command", seconds)
            for begin, end, what in PHASES:
                record(f"    {what}", at[end] - at[begin])
    load = os.getloadavg()
    print(f"medians of {args.repeats} fresh processes; load average {load[0]:.2f} on {os.cpu_count()} CPUs")
    for name, values in results.items():
        print(f"  {name:<48} {summary(values)}")


if __name__ == "__main__":
    main()
