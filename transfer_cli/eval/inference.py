"""The model's outputs on unlabelled samples, batch by batch, as evaluation computes them
(eval mode, the run's autocast, the same probabilities the metrics see)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from transfer_cli.data.bundle import Split
from transfer_cli.eval.evaluation import autocast
from transfer_cli.eval.metrics import metric_inputs


@torch.inference_mode()
def predict_split(model: nn.Module, split: Split, task: str, device: torch.device, batch_size: int,
                  precision: str = "fp32", on_batch: Callable[[int], None] = lambda done: None) -> torch.Tensor:
    """Class probabilities (or values for regression) of every sample, on the CPU, in split order;
    `on_batch(samples done)` after each batch."""
    model.eval()
    to_outputs = metric_inputs(task)
    kept, done = [], 0
    for x, y in split.batches(batch_size, device):
        with autocast(device, precision):
            out = model(x).float()
        kept.append(to_outputs(out, y)[0].cpu())
        done += len(x)
        on_batch(done)
    return torch.cat(kept)
