"""safetensors: the merged state dict (plain architecture, no LoRA keys) and model.json, the
architecture that rebuilds it (`transfer_cli.models.MODELS.build(name, params, input_shape=...,
num_outputs=...)`), checked by rebuilding the model from the folder and comparing outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transfer_cli.export.check import max_abs_diff, round_trip
from transfer_cli.models import MODELS
from transfer_cli.runs.rundir import write_atomic

FILE = "model.safetensors"
CONFIG = "model.json"


def export_safetensors(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor, folder: Path,
                       architecture: dict[str, Any]) -> dict:
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / FILE), metadata={"format": "pt"})
    write_atomic(folder / CONFIG, json.dumps(architecture, indent=2) + "\n")
    rebuilt = MODELS.build(architecture["name"], architecture["params"], input_shape=tuple(architecture["input_shape"]),
                           num_outputs=architecture["num_outputs"])
    rebuilt.load_state_dict(load_file(str(folder / FILE)))
    with torch.no_grad():
        theirs, ours = rebuilt.eval()(check), model(check)
    facts = round_trip("transfer_cli.models rebuilt from model.json", max_abs_diff(ours, theirs), len(check))
    return {"files": [FILE, CONFIG], "check": facts, "tensors": len(state)}
