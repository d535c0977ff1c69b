"""Multi-layer perceptron for vectors (any sample shape is flattened)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field
from torch import nn

from transfer_cli.core.registry import Params
from transfer_cli.models.base import TransferModel, activation
from transfer_cli.models.registry import MODELS


class MLPParams(Params):
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    norm: Literal["none", "batch", "layer"] = "layer"
    dropout: float = Field(0.0, ge=0, lt=1)


@MODELS.register("mlp", params=MLPParams)
def build_mlp(params: MLPParams, *, input_shape: tuple[int, ...], num_outputs: int) -> TransferModel:
    """MLP for vectors: blocks of Linear -> norm -> activation -> dropout."""
    blocks = nn.Sequential()
    blocks.add_module("flatten", nn.Flatten())
    width = math.prod(input_shape)
    names = []
    for i, out in enumerate(params.hidden):
        layers: list[nn.Module] = [nn.Linear(width, out)]
        if params.norm == "batch":
            layers.append(nn.BatchNorm1d(out))
        elif params.norm == "layer":
            layers.append(nn.LayerNorm(out))
        layers.append(activation(params.activation))
        if params.dropout:
            layers.append(nn.Dropout(params.dropout))
        blocks.add_module(f"block{i}", nn.Sequential(*layers))
        names.append(f"block{i}")
        width = out
    return TransferModel(blocks, width, num_outputs, names)
