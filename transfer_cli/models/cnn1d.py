"""1-D convolutional network for signals of shape (C, L)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from transfer_cli.core.registry import Params
from transfer_cli.models.base import TransferModel, activation, expect_rank
from transfer_cli.models.registry import MODELS


class CNN1dParams(Params):
    channels: list[int] = Field(default_factory=lambda: [32, 32, 64], min_length=1)
    kernel_size: int = Field(5, ge=1)
    downsample: bool = Field(True, description="halve the length (max-pool 2) after every block but the last")
    pool: Literal["max", "avg"] = "max"
    activation: Literal["relu", "gelu", "silu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)


@MODELS.register("cnn1d", params=CNN1dParams)
def build_cnn1d(params: CNN1dParams, *, input_shape: tuple[int, ...], num_outputs: int) -> TransferModel:
    """Conv1d blocks (conv -> batch norm -> activation [-> max-pool 2]), then global pooling over time."""
    expect_rank("cnn1d", input_shape, 2, "signals (C, L)")
    backbone = nn.Sequential()
    width = input_shape[0]
    names = []
    for i, out in enumerate(params.channels):
        layers = [nn.Conv1d(width, out, params.kernel_size, padding=params.kernel_size // 2, bias=False),
                  nn.BatchNorm1d(out), activation(params.activation)]
        if params.downsample and i < len(params.channels) - 1:
            layers.append(nn.MaxPool1d(2))
        block = nn.Sequential(*layers)
        backbone.add_module(f"block{i}", block)
        names.append(f"block{i}")
        width = out
    pool = nn.AdaptiveMaxPool1d(1) if params.pool == "max" else nn.AdaptiveAvgPool1d(1)
    backbone.add_module("pool", nn.Sequential(pool, nn.Flatten()))
    if params.dropout:
        backbone.add_module("dropout", nn.Dropout(params.dropout))
    return TransferModel(backbone, width, num_outputs, names)
