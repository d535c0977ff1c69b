"""Plain-PyTorch check of configs/hf_vit and configs/hf_resnet: the same Hugging Face architecture
(from the config's model.params.config), the same built-in images and pooling, trained from random
initialisation with a hand-written loop, no `transfer` engine. Says whether what a pretrain run
reaches is the architecture's doing on this task or the tool's.

    python scripts/check_hf_scratch.py                      # both configs, their own budget
    python scripts/check_hf_scratch.py --n-train 64 --epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transfer_cli.data import DATASETS  # noqa: E402


def pooled(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """hf_encoder's `auto` pooling of these two: ViT's first token, ResNet's pooler (average pool)."""
    out = encoder(pixel_values=x)
    if encoder.config.model_type == "vit":
        return out.last_hidden_state[:, 0]
    return out.pooler_output.flatten(1)


def check(config_file: Path, n_train: int | None, epochs: int | None) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = yaml.safe_load(config_file.read_text())
    arch = dict(cfg["model"]["params"]["config"])
    data_params = {**cfg["data"]["params"], **({"n_train": n_train} if n_train else {})}
    data = DATASETS.build(cfg["data"]["name"], data_params, seed=cfg.get("seed", 0))
    (x, y), (xv, yv) = ((data.split(s).x, data.split(s).y) for s in ("train", "val"))
    torch.manual_seed(cfg.get("seed", 0))
    encoder = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(arch.pop("model_type"), **arch))
    with torch.no_grad():
        dim = pooled(encoder.eval(), x[:2]).shape[1]
    head = torch.nn.Linear(dim, data.num_outputs)
    opt_cls = torch.optim.AdamW if cfg["optim"]["name"] == "adamw" else torch.optim.Adam
    opt = opt_cls(list(encoder.parameters()) + list(head.parameters()), lr=cfg["optim"]["lr"])
    batch = cfg["data"]["batch_size"]
    tic = time.perf_counter()
    for epoch in range(epochs or cfg["train"]["epochs"]):
        encoder.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(head(pooled(encoder, x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        encoder.eval()
        with torch.no_grad():
            acc = float((head(pooled(encoder, xv)).argmax(1) == yv).float().mean())
        print(f"{config_file.parent.name}  epoch {epoch + 1}  train/loss {loss.item():.3f}  val/accuracy {acc:.3f}  "
              f"{time.perf_counter() - tic:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["hf_resnet", "hf_vit"])
    parser.add_argument("--n-train", type=int, default=None, help="default: the config's")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name in args.configs:
        check(ROOT / "configs" / name / "pretrain.yaml", args.n_train, args.epochs)


if __name__ == "__main__":
    main()
