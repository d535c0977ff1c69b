#!/usr/bin/env python
"""Feature caching: per-epoch time of a linear probe with and without cached features, on the
built-in task, through the real CLI (same config, same seed, alternating, in one process).

    python scripts/bench_cache.py [--task signals|images] [--epochs 5] [--repeats 3]

Prints per-epoch seconds (median [min-max] over repeats) and the speed-up. Also checks that both
paths end with the same head weights, and times the floor: a hand-written loop (zero_grad,
forward, loss, backward, Adam step; batches by tensor indexing) training a head of the same shape
on in-memory features, which is what the cached path can at best cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transfer_cli.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(result.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--task", choices=["signals", "images"], default="signals",
                        help="signals: configs/quickstart (cnn1d); images: configs/images (resnet)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        pre = f"{tmp}/pretrain"
        folder = ROOT / "configs" / ("quickstart" if args.task == "signals" else "images")
        run(["pretrain", str(folder / "pretrain.yaml"), "--run-dir", pre, "--quiet", "--set", "train.epochs=1"])
        common = ["finetune", str(folder / "finetune.yaml"), "--init-from", pre, "--quiet",
                  "--set", "transfer.strategy=linear_probe", "--set", "data.per_class=null",
                  "--set", f"data.params.n_train={args.n_train}", "--set", f"train.epochs={args.epochs}",
                  "--set", "data.batch_size=128"]
        rows = {}
        for label, sets in (("with validation every epoch", []),
                            ("training only (one validation at the end)", ["--set", "train.eval_every_steps=1000000000"])):
            rows[label] = measure(common + sets, f"{tmp}/{len(rows)}", args)
        head_shape = tuple(load_file(f"{tmp}/0/cached-0/checkpoints/last/model.safetensors")["head.weight"].shape)
    for label, (per_epoch, extraction, same) in rows.items():
        print(f"{args.task}, {label}, {args.n_train} training samples, {args.epochs} epochs:")
        for mode, values in per_epoch.items():
            print(f"  {mode:>9}: {statistics.median(values):.4f} s/epoch [{min(values):.4f}-{max(values):.4f}]")
        ratio = statistics.median(per_epoch["uncached"]) / statistics.median(per_epoch["cached"])
        print(f"  one-time feature extraction (train + val): {statistics.median(extraction):.3f} s")
        print(f"  speed-up per epoch: {ratio:.1f}x; same final weights: {same}")
    floor = plain_head_epoch(head_shape, args)
    print(f"floor: a hand-written loop training the same head on in-memory features: "
          f"{statistics.median(floor):.4f} s/epoch [{min(floor):.4f}-{max(floor):.4f}]")


def plain_head_epoch(head_shape: tuple, args: argparse.Namespace) -> list[float]:
    """Seconds per epoch of the textbook loop on random features of the head's input size."""
    import time

    classes, width = head_shape
    x, y = torch.randn(args.n_train, width), torch.randint(0, classes, (args.n_train,))
    head = torch.nn.Linear(width, classes)
    optimizer, loss_fn = torch.optim.Adam(head.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    seconds = []
    for _ in range(args.repeats * args.epochs + 2):
        tic = time.perf_counter()
        for batch in torch.randperm(args.n_train).split(128):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(head(x[batch]), y[batch]).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - tic)
    return seconds[2:]  # the first epochs warm up


def measure(common: list[str], tmp: str, args: argparse.Namespace) -> tuple[dict, list, bool]:
    """Per-epoch seconds of each mode over the repeats (alternating), the extraction times, and
    whether both modes ended with the same weights."""
    per_epoch: dict[str, list[float]] = {"cached": [], "uncached": []}
    extraction: list[float] = []
    for repeat in range(args.repeats):
        for mode in ("uncached", "cached"):
            out = f"{tmp}/{mode}-{repeat}"
            run(common + ["--run-dir", out, "--set", f"transfer.cache_features={mode == 'cached'}"])
            timings = json.loads(Path(out, "report.json").read_text())["timings"]
            once = timings.get("feature_cache_seconds", 0.0)
            if once:
                extraction.append(once)
            per_epoch[mode].append((timings["train_seconds"] - once) / args.epochs)
    a = load_file(f"{tmp}/cached-0/checkpoints/last/model.safetensors")
    b = load_file(f"{tmp}/uncached-0/checkpoints/last/model.safetensors")
    return per_epoch, extraction, all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


if __name__ == "__main__":
    main()
