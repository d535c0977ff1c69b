#!/usr/bin/env python
"""What the memory switches save, and how close the memory estimate comes to the measured peak.

Fine-tunes a deep-but-narrow Hugging Face ViT (random weights written with save_pretrained into
a temporary folder, no download) on a generated image folder, each case in a fresh process:

  plain         the textbook PyTorch loop on the same model and batches (full finetune, AdamW)
  full          transfer's Trainer/Engine, full finetune
  full+ckpt     the same with train.activation_checkpointing: true
  lora          strategy lora (rank 8), frozen base in float32
  lora+bf16     the same with train.frozen_dtype: bf16
  lora+bf16+ckpt  both switches

and prints per case the estimate the run logs (parameters, and what training adds: gradients +
optimizer state + activations), the measured peak and its rise over the level before training
(CPU: resident set size sampled every millisecond, with glibc's mmap threshold fixed at 128 KiB so
that freed tensors leave the RSS; CUDA: max allocated), the ratio of the rise to the estimate, and
seconds per step (median). The rise includes the estimate's own measurement (one forward and
backward of a micro-batch, checkpointed when the case is) and the optimizer state's creation.

    python scripts/bench_memory.py                          # CPU, 12 layers, hidden 256, 64x64 images, batch 32
    python scripts/bench_memory.py --device cuda --batch 128 --image 224 --patch 16
    python scripts/bench_memory.py --cases full,full+ckpt --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peak_rise  # noqa: E402  (scripts/bench.py, next to this file)

CASES = {  # name: (what, config changes)
    "plain": ("hand-written loop", {}),
    "full": ("engine, full finetune", {}),
    "full+ckpt": ("engine, activation checkpointing", {"train": {"activation_checkpointing": True}}),
    "lora": ("engine, LoRA rank 8", {"transfer": {"strategy": "lora", "lora": {"rank": 8}}}),
    "lora+bf16": ("engine, LoRA, frozen base bf16", {"transfer": {"strategy": "lora", "lora": {"rank": 8}},
                                                    "train": {"frozen_dtype": "bf16"}}),
    "lora+bf16+ckpt": ("engine, LoRA, bf16, checkpointing",
                       {"transfer": {"strategy": "lora", "lora": {"rank": 8}},
                        "train": {"frozen_dtype": "bf16", "activation_checkpointing": True}}),
}


# ---- the model and data (once, in the parent) --------------------------------------------------
def make_inputs(folder: Path, args: argparse.Namespace) -> None:
    import transformers

    from scripts.make_example_data import make_shapes

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=args.image, patch_size=args.patch, hidden_size=args.hidden,
                                    num_hidden_layers=args.layers, num_attention_heads=max(args.hidden // 64, 1),
                                    intermediate_size=4 * args.hidden)
    transformers.AutoModel.from_config(config).save_pretrained(folder / "vit")
    per_class = -(-args.batch * (args.steps + 1) // 3)
    make_shapes(folder / "images", per_class=per_class, size=args.image, seed=0)


def config_for(case: str, folder: Path, args: argparse.Namespace) -> dict:
    config = {
        "seed": 0,
        "data": {"name": "image_folder", "params": {"path": str(folder / "images"), "workers": 0, "size": args.image,
                                                    "val_fraction": 0.05, "test_fraction": 0.05},
                 "batch_size": args.batch},
        "model": {"name": "hf_encoder", "params": {"path": str(folder / "vit")}},
        "optim": {"name": "adamw", "lr": 1e-4},
        "train": {"max_steps": args.steps, "eval_every_steps": 10**9, "precise_bn": 0, "device": args.device},
        "transfer": {"cache_features": False},
    }
    for section, values in CASES[case][1].items():
        config[section] = {**config.get(section, {}), **values}
    return config


# ---- one case, in a fresh process --------------------------------------------------------------
def child(case: str, folder: Path, args: argparse.Namespace) -> dict:
    from transfer_cli.config.resolve import load_experiment
    from transfer_cli.core.console import Console
    from transfer_cli.recipes.components import registries
    from transfer_cli.recipes.finetune import prepare_model
    from transfer_cli.recipes.parts import RunOptions, build_parts
    from transfer_cli.train.engine import BaseCallback, TrainState
    from transfer_cli.train.trainer import Trainer

    path = folder / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config_for(case, folder, args)))
    exp = load_experiment(path, "finetune", [], registries())
    console = Console(quiet=True)
    parts = build_parts(exp, RunOptions())
    prepare_model(exp, parts, console)
    train = parts.data.split("train")
    times: list[float] = []
    out: dict = {}

    class StepTimes(BaseCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, engine, state) -> None:  # noqa: ANN001
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now

    def run() -> None:
        if case == "plain":
            plain_loop(parts, exp, train, times)
            return
        trainer = Trainer(exp, parts, None, console)
        out["estimate"] = trainer.memory
        clock = StepTimes()
        trainer.add_callback(clock)
        clock.last = time.perf_counter()
        trainer.fit(train, None, TrainState())

    out["memory"] = peak_rise(run, parts.device)
    out["seconds_per_step"] = statistics.median(times[1:] or times)  # the first step allocates
    return out


def plain_loop(parts, exp, train, times: list[float]) -> None:  # noqa: ANN001
    model, device = parts.model, parts.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=exp.optim.lr, weight_decay=exp.optim.weight_decay)
    model.train()
    step = 0
    while step < exp.train.max_steps:
        for x, y in train.batches(exp.data.batch_size, device, shuffle=True, seed=exp.seed):
            tic = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            parts.loss(model(x).float(), y).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - tic)
            step += 1
            if step == exp.train.max_steps:
                break


def run_case(case: str, folder: Path, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, __file__, "--child", case, "--folder", str(folder), *passed_on(args)]
    # a fixed mmap threshold: glibc then returns a freed tensor's memory to the system at once, so the
    # RSS follows the live memory (with its default, adaptive threshold freed memory stays resident and
    # the peak says more about the allocator's history than about the step)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        print(f"  {case}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def passed_on(args: argparse.Namespace) -> list[str]:
    return [f"--{k}={v}" for k, v in vars(args).items() if k in ("layers", "hidden", "image", "patch", "batch",
                                                                  "steps", "device", "threads")]


# ---- the table ----------------------------------------------------------------------------------
def mib(size: float) -> str:
    return f"{size / 2**20:8.1f}"


def print_table(results: dict[str, dict | None]) -> None:
    print(f"{'case':<16}{'params':>9}{'est. adds':>10}{'(activ.)':>9}{'peak':>9}{'rise':>9}{'rise/est':>9}"
          f"{'s/step':>8}   MiB")
    for case, result in results.items():
        if result is None:
            continue
        memory, estimate = result["memory"], result.get("estimate")
        if estimate:
            adds = estimate["total"] - estimate["parameters"]
            cells = f"{mib(estimate['parameters'])} {mib(adds)} {mib(estimate['activations'])}"
            ratio = f"{memory['rise'] / adds:8.2f}"
        else:
            cells, ratio = f"{'':>8} {'':>8} {'':>8}", f"{'':>8}"
        print(f"{case:<16}{cells} {mib(memory['peak'])} {mib(memory['rise'])} {ratio} {result['seconds_per_step']:7.2f}")
    rise = {case: r["memory"]["rise"] for case, r in results.items() if r}
    for on, off in (("full+ckpt", "full"), ("lora+bf16+ckpt", "lora+bf16"), ("full", "plain")):
        if on in rise and off in rise and rise[off]:
            print(f"  rise {on} / {off}: {rise[on] / rise[off]:.2f}")
    peaks = {case: r["memory"]["peak"] for case, r in results.items() if r}
    if "lora+bf16" in peaks and "lora" in peaks:
        print(f"  peak lora+bf16 / lora: {peaks['lora+bf16'] / peaks['lora']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, Path(args.folder), args)))
        return
    load = os.getloadavg()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; ViT {args.layers} "
          f"layers, hidden {args.hidden}, {args.image}x{args.image} images, patch {args.patch}, batch {args.batch}, "
          f"{args.steps} steps per case; load average {load[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_inputs(folder, args)
        results = {case: run_case(case, folder, args) for case in args.cases.split(",")}
    print_table(results)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
