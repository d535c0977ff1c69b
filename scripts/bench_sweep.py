#!/usr/bin/env python
"""Feature reuse across a sweep: `transfer sweep` of linear-probe learning rates on the built-in
task, with the sweep's shared feature cache, without it (each trial runs the frozen backbone once
itself) and with feature caching off (the backbone runs every step), against a plain PyTorch
loop in the same process (per learning rate: the frozen backbone under no_grad and the head, Adam,
one validation pass per epoch).

    python scripts/bench_sweep.py [--lrs 5] [--epochs 5] [--n-train 4000] [--repeats 3] [--n-pretrain 10000]

Prints, per mode, the CPU seconds of the whole sweep (this process and its children: steadier
than wall time on a shared machine) and its wall seconds, median [min-max] over repeats (modes
alternating), the ratios to the shared cache, the training seconds and feature extraction seconds
the trials report (summed), and whether every mode found the same best value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transfer_cli.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = {"shared cache": {"share_features": True}, "cache per trial": {"share_features": False},
         "no caching": {"share_features": False}}


def run(args: list[str]) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise SystemExit(result.output)


def write_sweep(tmp: Path, mode: str, args: argparse.Namespace, pretrained: Path) -> Path:
    base = {"extends": str(ROOT / "configs/quickstart/finetune.yaml"),
            "data": {"per_class": None, "batch_size": 128, "params": {"n_train": args.n_train}},
            "train": {"epochs": args.epochs, "device": "cpu"},
            "transfer": {"init_from": str(pretrained), "strategy": "linear_probe",
                         "cache_features": False if mode == "no caching" else "auto"}}
    lrs = [float(f"{10 ** (-4 + 3 * i / max(args.lrs - 1, 1)):.2g}") for i in range(args.lrs)]
    sweep = {"base": "base.yaml", "method": "grid", "objective": "val/accuracy",
             "space": {"optim.lr": {"values": lrs}}, **MODES[mode]}
    folder = tmp / mode.replace(" ", "_")
    folder.mkdir(exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return folder / "sweep.yaml"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of work()."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    work()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def sweep_once(sweep_file: Path, out: Path) -> dict[str, float]:
    """CPU and wall seconds of the sweep, its trials' training and extraction seconds (summed), best value."""
    cpu, wall = timed(lambda: run(["sweep", sweep_file, "--run-dir", out, "--quiet"]))
    summary = json.loads((out / "sweep.json").read_text())
    timings = [json.loads((Path(t["run_dir"]) / "report.json").read_text())["timings"] for t in summary["trials"]]
    return {"cpu": cpu, "wall": wall, "train": sum(t["train_seconds"] for t in timings),
            "extraction": sum(t.get("feature_cache_seconds", 0.0) for t in timings), "best": summary["best"]["value"]}


def plain_loop(pretrained: Path, args: argparse.Namespace, lrs: int) -> tuple[float, float]:
    """Seconds of the textbook linear probe for every learning rate, on the same data and model."""
    from transfer_cli.data import DATASETS
    from transfer_cli.models import MODELS
    from transfer_cli.weights.files import read_weights

    data = DATASETS.build("motifs", {"task": "target", "n_train": args.n_train, "n_val": 500, "n_test": 1000},
                          seed=0)
    params = yaml.safe_load((pretrained / "config.yaml").read_text())["model"]
    model = MODELS.build(params["name"], params["params"], input_shape=data.input_shape,
                         num_outputs=data.num_outputs)
    weights = {k: v for k, v in read_weights(pretrained / "checkpoints/best/model.safetensors").items()
               if not k.startswith("head.")}
    model.load_state_dict(weights, strict=False)
    model.eval()
    train, val = data.split("train"), data.split("val")

    def probes() -> None:
        for _ in range(lrs):
            probe(model, train, val, data.num_outputs, args.epochs)

    return timed(probes)


def probe(model: torch.nn.Module, train: Any, val: Any, classes: int, epochs: int) -> None:
    """The textbook linear probe: the frozen backbone under no_grad, the head, Adam, a val pass per epoch."""
    head = torch.nn.Linear(model.head.in_features, classes)
    optimizer, loss_fn = torch.optim.Adam(head.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for batch in torch.randperm(len(train.y)).split(128):
            with torch.no_grad():
                features = model.backbone(train.x[batch])
            optimizer.zero_grad(set_to_none=True)
            loss_fn(head(features), train.y[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            correct = sum((head(model.backbone(val.x[b])).argmax(1) == val.y[b]).sum().item()
                          for b in torch.arange(len(val.y)).split(256))
    assert correct >= 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-pretrain", type=int, default=10000, help="source samples of the (one-epoch) pretrain")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pretrained = tmp / "pretrain"
        run(["pretrain", ROOT / "configs/quickstart/pretrain.yaml", "--run-dir", pretrained, "--quiet",
             "--set", "train.epochs=1", "--set", "train.device=cpu", "--set", f"data.params.n_train={args.n_pretrain}"])
        files = {mode: write_sweep(tmp, mode, args, pretrained) for mode in MODES}
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        plain: list[tuple[float, float]] = []
        sweep_once(files["shared cache"], tmp / "warm-up")  # imports (optuna, sqlalchemy) and first-call costs
        for repeat in range(args.repeats):
            for mode, sweep_file in files.items():
                results[mode].append(sweep_once(sweep_file, tmp / f"{mode.replace(' ', '_')}-{repeat}"))
            plain.append(plain_loop(pretrained, args, args.lrs))
    report(results, plain, args)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(results: dict[str, list[dict[str, float]]], plain: list[tuple[float, float]],
           args: argparse.Namespace) -> None:
    print(f"sweep of {args.lrs} linear-probe learning rates, {args.n_train} training samples, {args.epochs} epochs; "
          f"median [min-max] of {args.repeats}, seconds for the whole sweep:")
    reference = statistics.median(r["cpu"] for r in results["shared cache"])
    print(f"  {'':>16}  {'CPU s':>18}  {'x shared':>8}  {'wall s':>20}  {'trials train s':>14}  {'extraction s':>12}")
    for mode, rows in results.items():
        cpu = [r["cpu"] for r in rows]
        print(f"  {mode:>16}  {spread(cpu):>18}  {statistics.median(cpu) / reference:8.2f}  "
              f"{spread([r['wall'] for r in rows]):>20}  {statistics.median(r['train'] for r in rows):14.2f}  "
              f"{statistics.median(r['extraction'] for r in rows):12.2f}")
    cpu = [c for c, _ in plain]
    print(f"  {'plain loop':>16}  {spread(cpu):>18}  {statistics.median(cpu) / reference:8.2f}  "
          f"{spread([w for _, w in plain]):>20}  (backbone every step; no evaluation of test, no reports)")
    best = {mode: rows[0]["best"] for mode, rows in results.items()}
    print(f"  best val/accuracy per mode: {best}; the same in every mode: {len(set(best.values())) == 1}")


if __name__ == "__main__":
    main()
