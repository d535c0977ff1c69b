#!/usr/bin/env python
"""Measure that the built-in motif task pair actually rewards transfer.

For each seed: pretrain a small CNN on the source task, then on the target task
with k labelled examples per class compare

* scratch        - same architecture, random init, trained on the k-shot set;
* linear probe   - pretrained backbone frozen, new linear head;
* full finetune  - pretrained backbone + new head, everything trained
                   (BatchNorm in train mode: the plain recipe);
* full ft, backbone lr 1e-4 - the same, but the pretrained backbone gets a 10x
                   lower learning rate than the new head (discriminative lr);

all with Adam and the same number of epochs/steps; lr 1e-3 except where noted
(the probe uses lr 1e-2: it only trains a linear layer). Accuracy is on the (large) target test
split; the target train split has exactly k examples per class.

Plain PyTorch; imports only transfer_cli/data/synthetic.py (loaded by path, so
the rest of the package is not needed).

    python scripts/check_builtin_task.py            # 1-D and 2-D, seeds 0,1,2 (~2 min on 2 cores)
    python scripts/check_builtin_task.py --dims 1
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

_SYN_PATH = Path(__file__).resolve().parents[1] / "transfer_cli" / "data" / "synthetic.py"
_spec = importlib.util.spec_from_file_location("_builtin_synthetic", _SYN_PATH)
assert _spec is not None and _spec.loader is not None
synthetic = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = synthetic
_spec.loader.exec_module(synthetic)
make_motif_task = synthetic.make_motif_task


# --------------------------------------------------------------------------- models
class SmallCNN1d(nn.Module):
    """3 conv layers of `width` channels + global average pooling + linear head."""

    def __init__(self, in_ch: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv1d(in_ch, width, 7, padding=3), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _Block2d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.short(x))


class SmallResNet2d(nn.Module):
    """Stem conv + 2 residual blocks (`width` channels) + global average pooling + linear head."""

    def __init__(self, in_ch: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            _Block2d(width, width, 1), _Block2d(width, width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------- training
def _freeze_bn_stats(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, bs: int, lr: float,
          seed: int, params=None, freeze_bn: bool = False) -> None:
    """Adam, cross-entropy, fixed epochs, reshuffled minibatches (seeded)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters() if params is None else params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    for _ in range(epochs):
        model.train()
        if freeze_bn:
            _freeze_bn_stats(model)  # use (and keep) the pretrained BatchNorm statistics
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1024):
        correct += int((model(x[i : i + 1024]).argmax(1) == y[i : i + 1024]).sum())
    return 100.0 * correct / len(x)


def new_head(pre: nn.Module, n_classes: int, seed: int) -> nn.Module:
    m = copy.deepcopy(pre)
    torch.manual_seed(3000 + seed)
    m.head = nn.Linear(m.head.in_features, n_classes)
    return m


def run_one(dims: int, seed: int, a: argparse.Namespace) -> dict[str, float]:
    """One seed: data (world_seed = seed = data seed), pretrain, then the four target runs."""
    t0 = time.perf_counter()
    src, src_names = make_motif_task("source", dims=dims, n_train=a.n_source, n_val=0,
                                     n_test=a.n_source_test, seed=seed, world_seed=seed, noise=a.noise)
    t_src = time.perf_counter() - t0
    t0 = time.perf_counter()
    tgt, tgt_names = make_motif_task("target", dims=dims, n_train=a.k * 5, n_val=0,
                                     n_test=a.n_target_test, seed=seed, world_seed=seed, noise=a.noise)
    t_tgt = time.perf_counter() - t0
    xs, ys = src["train"]
    xt, yt = tgt["train"]  # exactly k per class (balanced)
    xte, yte = tgt["test"]
    arch = SmallCNN1d if dims == 1 else SmallResNet2d
    in_ch, k_tgt = xs.shape[1], len(tgt_names)
    out: dict[str, float] = {"t_data": t_src + t_tgt}

    torch.manual_seed(1000 + seed)
    pre = arch(in_ch, len(src_names), a.width)
    t0 = time.perf_counter()
    train(pre, xs, ys, epochs=a.pre_epochs, bs=128, lr=1e-3, seed=seed)
    out["t_pre"] = time.perf_counter() - t0
    out["source"] = accuracy(pre, *src["test"])

    budget = dict(epochs=a.ft_epochs, bs=a.ft_bs, seed=seed)

    torch.manual_seed(2000 + seed)  # scratch: same architecture, random init
    m = arch(in_ch, k_tgt, a.width)
    t0 = time.perf_counter()
    train(m, xt, yt, lr=1e-3, **budget)
    out["t_scratch"] = time.perf_counter() - t0
    out["scratch"] = accuracy(m, xte, yte)

    m = new_head(pre, k_tgt, seed)  # linear probe: frozen backbone (weights and BN stats)
    for p in m.backbone.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    train(m, xt, yt, lr=a.probe_lr, params=m.head.parameters(), freeze_bn=True, **budget)
    out["t_probe"] = time.perf_counter() - t0
    out["probe"] = accuracy(m, xte, yte)

    m = new_head(pre, k_tgt, seed)  # full fine-tune, BatchNorm in train mode (plain recipe)
    t0 = time.perf_counter()
    train(m, xt, yt, lr=1e-3, **budget)
    out["t_finetune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["finetune"] = accuracy(m, xte, yte)
    out["t_eval"] = time.perf_counter() - t0

    m = new_head(pre, k_tgt, seed)  # full fine-tune, backbone at lr 1e-4 (head 1e-3)
    groups = [{"params": m.backbone.parameters(), "lr": 1e-4}, {"params": m.head.parameters()}]
    train(m, xt, yt, lr=1e-3, params=groups, **budget)
    out["finetune_lowlr"] = accuracy(m, xte, yte)

    # the chain a user runs: make data -> pretrain -> fine-tune -> evaluate
    out["t_chain"] = out["t_data"] + out["t_pre"] + out["t_finetune"] + out["t_eval"]
    return out


def fmt(vals: list[float]) -> str:
    m = statistics.mean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:5.1f} ± {s:4.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, default=10, help="labelled target examples per class")
    p.add_argument("--noise", type=float, default=None, help="default: make_motif_task's default")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--n-source", type=int, default=None, help="source train size (default 10000 1-D, 4000 2-D)")
    p.add_argument("--n-source-test", type=int, default=1000)
    p.add_argument("--n-target-test", type=int, default=1000)
    p.add_argument("--pre-epochs", type=int, default=None, help="default 12 (1-D), 6 (2-D)")
    p.add_argument("--ft-epochs", type=int, default=20)
    p.add_argument("--ft-bs", type=int, default=10)
    p.add_argument("--probe-lr", type=float, default=1e-2)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.noise is None:
        args.noise = make_motif_task.__kwdefaults__["noise"]

    t_all = time.perf_counter()
    for dims in args.dims:
        a = copy.copy(args)
        a.n_source = args.n_source or (10000 if dims == 1 else 4000)
        a.pre_epochs = args.pre_epochs or (12 if dims == 1 else 6)
        rows = []
        for s in args.seeds:
            rows.append(run_one(dims, s, a))
            print(f"  [dims={dims} seed={s}] " + " ".join(
                f"{k}={v:.1f}" for k, v in rows[-1].items() if not k.startswith("t_")), flush=True)
        arch = ("SmallCNN1d: 3 conv x32 + BN + global avg pool" if dims == 1
                else "SmallResNet2d: stem + 2 residual blocks x32 + BN + global avg pool")
        steps = a.ft_epochs * -(-5 * a.k // a.ft_bs)
        print(f"\n== dims={dims}  {arch}\n"
              f"   data: noise={a.noise}, default length, seeds {args.seeds} (world_seed = data seed)\n"
              f"   pretrain: source n_train={a.n_source} (10 classes), {a.pre_epochs} epochs, bs 128, Adam 1e-3\n"
              f"   target: k={a.k}/class x 5 classes; every method: {a.ft_epochs} epochs, bs {a.ft_bs} "
              f"({steps} steps), Adam 1e-3 (probe: head only, lr {a.probe_lr}); "
              f"test n={a.n_target_test}, chance 20%")
        table = [("source test acc (pretrained)", "source"),
                 ("target: scratch", "scratch"),
                 ("target: linear probe", "probe"),
                 ("target: full finetune", "finetune"),
                 ("target: full ft, backbone lr 1e-4", "finetune_lowlr")]
        print(f"   {'':34s}{'acc % (mean ± std)':>20s}   per seed")
        for label, key in table:
            vals = [r[key] for r in rows]
            print(f"   {label:34s}{fmt(vals):>20s}   " + ", ".join(f"{v:.1f}" for v in vals))
        for label, key in (("finetune - scratch", "finetune"), ("ft(backbone 1e-4) - scratch", "finetune_lowlr")):
            gain = [r[key] - r["scratch"] for r in rows]
            print(f"   {label:34s}{fmt(gain):>20s}   " + ", ".join(f"{g:+.1f}" for g in gain))
        print("   timings, s (mean over seeds): " + ", ".join(
            f"{k[2:]}={statistics.mean(r[k] for r in rows):.1f}"
            for k in ("t_data", "t_pre", "t_scratch", "t_probe", "t_finetune", "t_eval", "t_chain"))
            + f"; max chain={max(r['t_chain'] for r in rows):.1f}, max pretrain={max(r['t_pre'] for r in rows):.1f}")
    print(f"\ntotal wall time: {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
