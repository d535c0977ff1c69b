#!/usr/bin/env python
"""What does a command cost before it does any work?

Runs each probe in a fresh process several times and prints the median [min-max] seconds:

  transfer --help             the CLI alone (torch is imported lazily, so this stays fast)
  import torch                the floor of every command that trains or evaluates
  import torch, torchmetrics  the whole library: matplotlib, scipy and (when installed) transformers
  our metrics                 transfer_cli.eval.metrics: torch and only the parts of torchmetrics used
  first optimizer             torch imports its compiler stack (torch._dynamo) on the first optimizer
  pretrain: first step        `transfer pretrain configs/quickstart/pretrain.yaml --smoke`, from the
                              start of the process to the engine's first training step, and to its end

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

# run in the child: seconds from its first line to the engine's first training step, on stderr
FIRST_STEP_PROBE = """
import sys, time
start = time.perf_counter()
from transfer_cli.train import engine
fit = engine.Engine.fit
def timed_fit(self, *args, **kwargs):
    print(f"FIRST_STEP {time.perf_counter() - start:.3f}", file=sys.stderr)
    engine.Engine.fit = fit
    return fit(self, *args, **kwargs)
engine.Engine.fit = timed_fit
from transfer_cli.cli import main
sys.argv = ["transfer", *sys.argv[1:]]
main()
"""

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
            record("pretrain --smoke: first training step", tagged(output, "FIRST_STEP"))
            record("pretrain --smoke: whole command", seconds)
    load = os.getloadavg()
    print(f"medians of {args.repeats} fresh processes; load average {load[0]:.2f} on {os.cpu_count()} CPUs")
    for name, values in results.items():
        print(f"  {name:<40} {summary(values)}")


if __name__ == "__main__":
    main()
