#!/usr/bin/env python
"""Does our training loop cost anything over the loop a user would write by hand?

Trains the same model (same initial weights) on the same in-memory data with the same seed

  plain   the textbook PyTorch loop: zero_grad, forward, loss, backward, step; batches taken
          from the tensors by indexing with a seeded permutation per epoch
  engine  transfer's Trainer/Engine as `transfer pretrain` runs it (the hf_ cases: as `transfer
          finetune` runs a Hugging Face folder, strategy full): LR schedule, strategy phase
          controller, NaN guard, loss accumulation, signal handling, progress, metrics log and
          checkpoint callbacks (evaluation is scheduled after the timed steps)

alternating the two several times in one process, and prints steps/s as median [min-max] and
the ratio engine/plain (of the medians, and the median of the ratios of adjacent pairs). Both
loops compute the same thing: the script checks that they end with identical weights. Peak
memory is measured per case and loop in a fresh process (CUDA: max allocated; CPU: the rise of
the resident set size over its level before training, sampled every millisecond).

    python scripts/bench.py                          # both cases, torch's default thread count
    python scripts/bench.py --cases mlp --repeats 9 --steps 200
    python scripts/bench.py --device cuda --precision bf16
    python scripts/bench.py --trackers               # engine with TensorBoard and MLflow (sqlite) on
    python scripts/bench.py --cases hf_vit,hf_gpt2   # a small ViT and GPT-2 through `hf_encoder` (needs [hf])

With --trackers, the engine's runs also open the run's trackers as `transfer pretrain` does
(TensorBoard and an MLflow sqlite store in the temporary folder: the import, the store's
creation and the params are written while the timed steps run) and hand them a record of 12
metrics every 10 steps, as evaluations would (the evaluations themselves are not run: the plain
loop has none).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from transfer_cli.config.resolve import load_experiment  # noqa: E402
from transfer_cli.core.console import Console  # noqa: E402
from transfer_cli.eval.evaluation import autocast  # noqa: E402
from transfer_cli.recipes.components import registries  # noqa: E402
from transfer_cli.recipes.parts import RunOptions, build_parts  # noqa: E402
from transfer_cli.runs.rundir import RunDir  # noqa: E402
from transfer_cli.track.tracking import Tracking  # noqa: E402
from transfer_cli.train.engine import BaseCallback, TrainState  # noqa: E402
from transfer_cli.train.trainer import Trainer  # noqa: E402


@dataclass
class Case:
    name: str
    what: str
    config: dict
    # the Hugging Face cases: writes the model folder (and text data) into the work dir, returns
    # the config's data and model sections; such a case runs as `transfer finetune` would
    prepare: Optional[Callable[[Path], dict]] = None


CASES = {
    "mlp": Case("mlp", "MLP 160-256-256-10 (layer norm) on 160-d vectors, batch 256", {
        "data": {"name": "motifs", "params": {"task": "source", "n_train": 8192, "n_val": 64, "n_test": 64},
                 "batch_size": 256},
        "model": {"name": "mlp", "params": {"hidden": [256, 256]}},
    }),
    "resnet": Case("resnet", "ResNet widths 32-64-128 on 3x32x32 images, batch 128", {
        "data": {"name": "motifs2d", "params": {"task": "source", "n_train": 2048, "n_val": 64, "n_test": 64,
                                                 "length": 32, "channels": 3}, "batch_size": 128},
        "model": {"name": "resnet", "params": {"widths": [32, 64, 128]}},
    }),
    "hf_vit": Case("hf_vit", "Hugging Face ViT (4 layers, hidden 192, patch 4) on 3x32x32 images, batch 64", {},
                   prepare=lambda workdir: hf_vit(workdir)),
    "hf_gpt2": Case("hf_gpt2", "Hugging Face GPT-2 (4 layers, hidden 192) on 32-token texts, batch 64", {},
                    prepare=lambda workdir: hf_gpt2(workdir)),
}


def save_hf_model(folder: Path, config) -> str:  # noqa: ANN001  a transformers config
    """A randomly initialised (seeded) Hugging Face model written as save_pretrained does."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def hf_vit(workdir: Path) -> dict:
    import transformers

    folder = save_hf_model(workdir / "vit", transformers.ViTConfig(
        image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=768))
    return {"data": {"name": "motifs2d", "params": {"task": "source", "n_train": 1024, "n_val": 64, "n_test": 64,
                                                    "length": 32, "channels": 3}, "batch_size": 64},
            "model": {"name": "hf_encoder", "params": {"path": folder}}}


def hf_gpt2(workdir: Path) -> dict:
    import transformers
    from make_example_data import make_reviews, make_word_tokenizer

    reviews = make_reviews(workdir / "reviews.csv", n=2048)
    with open(reviews) as handle:
        texts = [line.rsplit(",", 1)[0] for line in handle.read().splitlines()[1:]]
    tokenizer = make_word_tokenizer(workdir / "tokenizer.json", texts)
    import tokenizers

    vocab = tokenizers.Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    folder = save_hf_model(workdir / "gpt2", transformers.GPT2Config(
        n_embd=192, n_layer=4, n_head=3, vocab_size=vocab, n_positions=64,
        # no dropout (ViT's default too): its random masks would differ between the loops, and the
        # script checks that both end with the same weights
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return {"data": {"name": "text_csv", "params": {"path": str(reviews), "text": "review", "label": "sentiment",
                                                    "tokenizer": str(tokenizer), "max_length": 32,
                                                    "val_fraction": 0.05, "test_fraction": 0.05},
                     "batch_size": 64},
            "model": {"name": "hf_encoder", "params": {"path": folder}}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocks() -> tuple[float, float]:
    """Wall time and this thread's CPU time (steadier on a shared machine: other processes do not count)."""
    return time.perf_counter(), time.thread_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


# ---- setting up one case -----------------------------------------------------------------------
class Setup:
    """The experiment, its parts (data, model, loss) and the model's initial weights."""

    def __init__(self, case: Case, args: argparse.Namespace, workdir: Path) -> None:
        if case.prepare:
            (workdir / case.name).mkdir(exist_ok=True)
        sections = case.prepare(workdir / case.name) if case.prepare else case.config
        config = {"seed": 0, **sections, "optim": {"name": "adamw", "lr": 1e-3},
                  # precise BN off: the plain loop has no counterpart (its cost: scripts/bench_precise_bn.py)
                  "train": {"epochs": 1, "max_steps": args.steps, "eval_every_steps": 10**9, "precise_bn": 0,
                            "device": args.device, "precision": args.precision}}
        if args.trackers:
            config["log"] = {"tensorboard": True, "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db",
                                                             "experiment": case.name}}
        path = workdir / f"{case.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.stage = "finetune" if case.prepare else "pretrain"
        self.exp = load_experiment(path, self.stage, [], registries())
        self.parts = build_parts(self.exp, RunOptions())
        self.device = self.parts.device
        self.initial = {k: v.clone() for k, v in self.parts.model.state_dict().items()}
        self.train = self.parts.data.split("train")
        self.workdir, self.runs, self.name = workdir, 0, case.name

    def reset_model(self) -> torch.nn.Module:
        self.parts.model.load_state_dict(self.initial)
        self.parts.model.zero_grad(set_to_none=True)
        return self.parts.model

    def final_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.parts.model.state_dict().items()}


# ---- the two loops -------------------------------------------------------------------------------
def run_plain(setup: Setup, steps: int) -> tuple[float, float]:
    """The textbook loop; returns (wall, CPU) seconds for `steps` optimizer steps."""
    model, device, exp = setup.reset_model(), setup.device, setup.exp
    x, y = setup.train.x.to(device), setup.train.y.to(device)
    batch_size, seed = exp.data.batch_size, exp.seed
    optimizer = torch.optim.AdamW(model.parameters(), lr=exp.optim.lr, weight_decay=exp.optim.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    sync(device)
    tic = clocks()
    step, epoch = 0, 0
    while step < steps:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(device)
        for begin in range(0, len(x), batch_size):
            index = order[begin:begin + batch_size]
            xb, yb = x[index], y[index]
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, exp.train.precision):
                loss = loss_fn(model(xb).float(), yb)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    sync(device)
    return since(tic)


class StepClock(BaseCallback):
    """The time from the start of fit to the end of the last training step (the final
    evaluation and checkpoint come after it and are not counted)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.start, self.elapsed = device, (0.0, 0.0), (0.0, 0.0)

    def on_fit_start(self, engine, state) -> None:
        sync(self.device)
        self.start = clocks()

    def on_step_end(self, engine, state) -> None:
        if state.step == engine.cfg.max_steps:
            sync(self.device)
            self.elapsed = since(self.start)


def run_engine(setup: Setup, steps: int) -> tuple[float, float]:
    """Our Trainer with its callbacks writing to a real run directory; returns (wall, CPU) seconds
    for `steps` optimizer steps."""
    setup.reset_model()
    setup.exp.train.max_steps = steps
    setup.runs += 1
    run = RunDir(setup.workdir / f"run-{setup.name}-{setup.runs}")
    run.create("new", {"config.yaml": "{}\n", "run.json": "{}\n"})
    trainer = Trainer(setup.exp, setup.parts, run, Console(quiet=True))
    clock = StepClock(setup.device)
    trainer.callbacks.insert(0, clock)
    trainer.engine.callbacks.insert(0, clock)
    tracking = None
    if setup.exp.log.tensorboard or setup.exp.log.mlflow:
        tracking = Tracking.open(run, setup.exp, "pretrain", {"init": "random"}, Console(quiet=True))
        trainer.add_callback(TrackerFeed(tracking))
    trainer.fit(setup.train, None, TrainState())
    trainer.close()
    if tracking is not None:
        tracking.close(None)
    return clock.elapsed


class TrackerFeed(BaseCallback):
    """Every 10 steps, a record like an evaluation's, for the trackers."""

    def __init__(self, tracking: "Tracking") -> None:
        self.tracking = tracking

    def on_step_end(self, engine, state) -> None:
        if state.step % 10 == 0:
            record = {"step": state.step, "lr": 1e-3, "train/loss": 1.0,
                      **{f"val/metric{i}": 0.5 for i in range(10)}}
            self.tracking.on_eval_end(engine, state, record, False)


LOOPS: dict[str, Callable[[Setup, int], tuple[float, float]]] = {"plain": run_plain, "engine": run_engine}


# ---- memory ----------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rise(run: Callable[[], object], device: torch.device) -> dict:
    """The peak memory while `run()` runs and its rise over the level before: CUDA max allocated,
    or on CPU the resident set size sampled every millisecond (and the process's maxrss)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        peak = torch.cuda.max_memory_allocated(device)
        return {"kind": "cuda max allocated", "peak": peak, "rise": peak - before}
    before, peak, running = _rss_bytes(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        running[0] = False
        sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": "RSS", "peak": max(peak[0], before), "rise": max(peak[0] - before, 0), "maxrss": maxrss}


def peak_memory_child(case: str, loop: str, args: argparse.Namespace) -> None:
    """In a fresh process: one run of `loop`, then print its peak memory (bytes) as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(CASES[case], args, Path(tmp))
        print(json.dumps(peak_rise(lambda: LOOPS[loop](setup, args.steps), setup.device)))


def peak_memory(case: str, loop: str, args: argparse.Namespace) -> Optional[dict]:
    command = [sys.executable, __file__, "--memory-child", case, loop, "--steps", str(args.steps),
               "--device", args.device, "--precision", args.precision]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"  memory probe failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the comparison --------------------------------------------------------------------------------
def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def ratios(rates: dict[str, list[float]]) -> str:
    """engine/plain: the ratio of the medians, and the median [min-max] of adjacent pairs' ratios."""
    pairs = [e / p for e, p in zip(rates["engine"], rates["plain"])]
    of_medians = statistics.median(rates["engine"]) / statistics.median(rates["plain"])
    return f"{of_medians:.3f} (pairs {statistics.median(pairs):.3f} [{min(pairs):.3f}-{max(pairs):.3f}])"


def bench_case(case: Case, args: argparse.Namespace, workdir: Path) -> dict:
    setup = Setup(case, args, workdir)
    rates: dict[str, dict[str, list[float]]] = {"wall": {"plain": [], "engine": []}, "cpu": {"plain": [], "engine": []}}
    identical = True
    for loop in LOOPS.values():  # warm-up: first-touch allocations, lazy initialisations
        loop(setup, min(args.steps, 10))
    for repeat in range(args.repeats):
        order = ["plain", "engine"] if repeat % 2 == 0 else ["engine", "plain"]
        finals = {}
        for name in order:
            wall, cpu = LOOPS[name](setup, args.steps)
            rates["wall"][name].append(args.steps / wall)
            rates["cpu"][name].append(args.steps / cpu)
            finals[name] = setup.final_weights()
        identical &= all(torch.equal(finals["plain"][k], finals["engine"][k]) for k in finals["plain"])
    memory = {} if args.no_memory else {name: peak_memory(case.name, name, args) for name in LOOPS}
    return {"case": case, "steps": args.steps, "rates": rates, "identical": identical, "memory": memory}


def print_result(result: dict) -> None:
    case, rates = result["case"], result["rates"]
    print(f"\n{case.name}: {case.what}; {result['steps']} steps per run")
    for name in ("plain", "engine"):
        line = f"  {name:<7} steps/s {summary(rates['wall'][name])}   per CPU-second {summary(rates['cpu'][name])}"
        memory = result["memory"].get(name)
        if memory:
            line += f"   peak {memory['kind']} {memory['peak'] / 2**20:.0f} MiB (+{memory['rise'] / 2**20:.1f} in training)"
        print(line)
    print(f"  engine/plain  steps/s {ratios(rates['wall'])}   per CPU-second {ratios(rates['cpu'])}")
    print(f"  same final weights: {'yes (bit for bit)' if result['identical'] else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="mlp,resnet", help="comma-separated: " + ", ".join(CASES)
                        + " (the hf_ cases need the [hf] extra)")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each loop, alternated")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per run (default: mlp 150, resnet 15)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on a shared "
                                                                 "machine; 0: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory probes")
    parser.add_argument("--trackers", action="store_true", help="the engine with TensorBoard and MLflow on")
    parser.add_argument("--memory-child", nargs=2, metavar=("CASE", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory_child(*args.memory_child, args)
        return
    default_steps = {"mlp": 150, "resnet": 15, "hf_vit": 15, "hf_gpt2": 30}
    load = os.getloadavg()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {args.precision}; "
          f"{args.repeats} alternated runs per loop; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            case_args = argparse.Namespace(**{**vars(args), "steps": args.steps or default_steps[name]})
            print_result(bench_case(CASES[name], case_args, Path(tmp)))
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
