#!/usr/bin/env python
"""`transfer rank` on the built-in task: do the scores order six candidate starting points as
fine-tuning them does, and how much faster is ranking than fine-tuning every candidate?

    python scripts/rank_builtin.py [--out runs/rank-builtin] [--budget 20]

Candidates for the quickstart target (configs/quickstart/finetune.yaml: 10 labelled examples
per class), all cnn1d, all made through the CLI:
  - the quickstart source pretrain (configs/quickstart/pretrain.yaml) after 1, 3 and 12 epochs
    (its checkpoints, as weights files),
  - the same pretrain on shuffled source labels (4 epochs; `tensors` data written here),
  - a source from another motif world (world_seed 7: motifs the target never shows; 4 epochs),
  - random initialisation (a fresh model's weights file).
The other modality (the motifs2d images) does not apply: its resnet takes (1, H, W) images, the
target holds (1, 160) signals.

Then `transfer rank` (timed as a command) and `transfer rank --validate BUDGET` (each candidate
fine-tuned with the target config for BUDGET epochs); prints the scores, the fine-tuned test
accuracies, Kendall's tau / Spearman's rho, and the time of ranking against fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICKSTART = ROOT / "configs" / "quickstart"
MODEL = "{name: cnn1d, params: {channels: [32, 32, 32], kernel_size: 5, pool: avg}}"  # configs/quickstart/base.yaml


def transfer(*args: str) -> float:
    """Run `transfer ARGS` in a fresh process; its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CI="1")
    tic = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "transfer_cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if result.returncode != 0:
        raise SystemExit(f"transfer {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return seconds


def shuffled_source(out: Path) -> Path:
    """The quickstart source data with its training labels permuted (val keeps true labels)."""
    from transfer_cli.data import DATASETS
    from transfer_cli.data.builtin import MotifParams

    data = DATASETS.build("motifs", MotifParams(task="source", n_train=10000, n_val=1000, n_test=1000), seed=0)
    folder = out / "shuffled-data"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        x, y = data.split(split).x, data.split(split).y
        if split == "train":
            y = y[torch.randperm(len(y), generator=generator)]
        np.savez(folder / f"{split}.npz", x=x.numpy(), y=y.numpy())
    return folder


def random_weights(out: Path) -> Path:
    from transfer_cli.models import MODELS
    from safetensors.torch import save_file

    torch.manual_seed(0)
    params = MODELS.get("cnn1d").params(channels=[32, 32, 32], kernel_size=5, pool="avg")
    model = MODELS.build("cnn1d", params, input_shape=(1, 160), num_outputs=10)
    path = out / "random-init.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}, str(path))
    return path


def checkpoint_at(run: Path, epoch: int, steps_per_epoch: int) -> Path:
    return run / "checkpoints" / f"step-{epoch * steps_per_epoch:08d}" / "model.safetensors"


def build_candidates(out: Path) -> tuple[list[str], float]:
    """The six candidates (paths) and the seconds their pretraining took."""
    tic = time.perf_counter()
    source = out / "source"
    if not (source / "report.json").is_file():  # 12 epochs, every epoch's checkpoint kept
        transfer("pretrain", str(QUICKSTART / "pretrain.yaml"), "--run-dir", str(source), "--quiet",
                 "--set", "train.keep_last=12")
    steps_per_epoch = json.loads((source / "report.json").read_text())["timings"]["steps"] // 12
    shuffled, other = out / "shuffled", out / "other-world"
    if not (shuffled / "report.json").is_file():
        folder = shuffled_source(out)
        data = (f"{{name: tensors, params: {{train: {folder / 'train.npz'}, val: {folder / 'val.npz'}}}, "
                f"batch_size: 128}}")
        transfer("pretrain", str(QUICKSTART / "pretrain.yaml"), "--run-dir", str(shuffled), "--quiet",
                 "--set", f"data={data}", "--set", "train.epochs=4", "--set", "eval.split=val")
    if not (other / "report.json").is_file():
        transfer("pretrain", str(QUICKSTART / "pretrain.yaml"), "--run-dir", str(other), "--quiet",
                 "--set", "data.params.world_seed=7", "--set", "train.epochs=4")
    candidates = [str(checkpoint_at(source, e, steps_per_epoch)) for e in (1, 3, 12)]
    candidates += [str(shuffled), str(other), str(random_weights(out))]
    return candidates, time.perf_counter() - tic


NAMES = ["source, 1 epoch", "source, 3 epochs", "source, 12 epochs", "shuffled labels", "other motif world",
         "random init"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rank-builtin")
    parser.add_argument("--budget", default="20", help="--validate BUDGET (epochs, or Nsteps)")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    candidates, pretrain_seconds = build_candidates(out)
    names = dict(zip(candidates, NAMES))
    target = str(QUICKSTART / "finetune.yaml")
    common = ["--set", f"model={MODEL}", "--overwrite", "--quiet"]  # weights files need the target's model
    rank_wall = transfer("rank", target, *candidates, "--run-dir", str(out / "rank"), *common)
    plain = json.loads((out / "rank" / "report.json").read_text())
    transfer("rank", target, *candidates, "--run-dir", str(out / "rank-validate"), "--validate", args.budget, *common)
    report = json.loads((out / "rank-validate" / "report.json").read_text())
    validation = report["validation"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; candidates pretrained in {pretrain_seconds:.0f} s")
    print(f"target: configs/quickstart/finetune.yaml ({report['data']['sizes']['train']} training samples, "
          f"{report['data'].get('per_class')} per class); --validate {args.budget}: "
          f"{validation['split']} {validation['metric']}")
    print()
    print("| candidate | LogME | H-score | NCE | LEEP | extraction s | fine-tuned test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for cand in report["candidates"]:
        s = cand["scores"]
        cells = [f"{s[k]:.4f}" if s[k] is not None else "n/a" for k in ("logme", "hscore", "nce", "leep")]
        print(f"| {names[cand['candidate']]} | " + " | ".join(cells)
              + f" | {cand['extraction_seconds']:.2f} | {100 * cand['finetuned']['value']:.1f} |")
    print()
    for name, c in validation["correlations"].items():
        tau, rho = c["kendall_tau"], c["spearman_rho"]
        print(f"{name:>6} vs fine-tuned accuracy over {c['candidates']} candidates: Kendall tau "
              f"{tau:+.3f}, Spearman rho {rho:+.3f}" if tau is not None else f"{name:>6}: n/a")
    per = plain["timings"]["rank_seconds"] / len(candidates)
    print()
    print(f"rank: {plain['timings']['rank_seconds']:.1f} s in the command ({per:.2f} s per candidate, data built "
          f"once), {rank_wall:.1f} s wall for the whole `transfer rank` process (imports included)")
    ft = validation["finetune_seconds"]
    print(f"fine-tuning all {len(candidates)} candidates ({args.budget} epochs each): {ft:.1f} s; "
          f"ratio {ft / plain['timings']['rank_seconds']:.0f}x the time of rank in the command, "
          f"{ft / rank_wall:.1f}x its wall time")


if __name__ == "__main__":
    main()
