"""TorchScript: the model traced (torch.jit.trace) on a batch of the run's data, checked in torch
on a batch of another size, so the saved graph is known to take any batch size."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from transfer_cli.export.check import max_abs_diff, round_trip

FILE = "model.pt"


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor, folder: Path) -> dict:
    path = folder / FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still loads everywhere
        traced = torch.jit.trace(model, (example,), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        theirs, ours = loaded(check), model(check)
    facts = round_trip(f"torch.jit {torch.__version__}", max_abs_diff(ours, theirs), len(check))
    return {"files": [FILE], "check": facts, "input": "x", "output": "logits"}
