"""A small residual CNN for images of shape (C, H, W)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from transfer_cli.core.registry import Params
from transfer_cli.models.base import TransferModel, expect_rank
from transfer_cli.models.registry import MODELS


class ResNetParams(Params):
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    blocks_per_stage: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet", params=ResNetParams)
def build_resnet(params: ResNetParams, *, input_shape: tuple[int, ...], num_outputs: int) -> TransferModel:
    """Stem conv, one stage per width (stride 2 after the first), global average pooling."""
    expect_rank("resnet", input_shape, 3, "images (C, H, W)")
    backbone = nn.Sequential()
    backbone.add_module(
        "stem",
        nn.Sequential(nn.Conv2d(input_shape[0], params.widths[0], 3, 1, 1, bias=False),
                      nn.BatchNorm2d(params.widths[0]), nn.ReLU()),
    )
    names = ["stem"]
    width = params.widths[0]
    for i, out in enumerate(params.widths):
        blocks = [BasicBlock(width if j == 0 else out, out, 2 if (i > 0 and j == 0) else 1)
                  for j in range(params.blocks_per_stage)]
        backbone.add_module(f"stage{i}", nn.Sequential(*blocks))
        names.append(f"stage{i}")
        width = out
    backbone.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    if params.dropout:
        backbone.add_module("dropout", nn.Dropout(params.dropout))
    return TransferModel(backbone, width, num_outputs, names)
