"""The model contract: backbone + head, with layer groups from input to output.

`features(x) = backbone(x)`, `forward(x) = head(features(x))`. Head replacement, freezing,
layer-wise learning rates and gradual unfreezing all act on this shape, for every architecture.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from transfer_cli.core.errors import DataError


class TransferModel(nn.Module):
    """A backbone producing `feature_dim` features and a linear head producing the outputs."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int, groups: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_outputs)
        self._groups = list(groups)
        self._fixed_modules: list[str] = []

    @property
    def num_outputs(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def layer_group_names(self) -> list[str]:
        """Qualified names of the layer groups, input to output; the head is last."""
        return [f"backbone.{name}" for name in self._groups] + ["head"]

    def layer_groups(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self.layer_group_names()]

    def reinitialize_pretrained(self) -> None:
        """Replace weights the architecture loaded by itself with a random initialisation (for
        the scratch baseline). Our own architectures start random: nothing to do."""

    def recorded_params(self, params: dict) -> dict:
        """The params a pretrain run records in its config.yaml, from which a later stage rebuilds
        this architecture from the run alone. Ours are self-contained already."""
        return params

    def pretrained_lineage(self) -> dict | None:
        """Where the weights come from when the architecture loads pretrained weights by itself
        (e.g. `hf_encoder`): path, weights file and sha256. None: randomly initialised."""
        return None

    def checkpointing_units(self) -> list[nn.Module]:
        """The modules activation checkpointing recomputes, each as a whole: the backbone's layer
        groups (the head's activations are the logits: nothing to save)."""
        return self.layer_groups()[:-1]

    def enable_activation_checkpointing(self) -> str:
        """Recompute each checkpointing unit's activations in the backward; says how."""
        from transfer_cli.models.checkpointing import checkpoint_modules

        units = self.checkpointing_units()
        checkpoint_modules(units)
        return f"per layer group ({len(units)} groups)"

    def fix_modules(self, names: list[str]) -> None:
        """Keep these submodules in eval mode whenever the model trains (frozen parts keep their
        running statistics and run dropout-free)."""
        self._fixed_modules = list(names)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            for name in self._fixed_modules:
                self.get_submodule(name).eval()
        return self

    def reset_head(self, num_outputs: int | None = None) -> None:
        """A freshly initialised head (with `num_outputs` outputs, default: as before)."""
        out = num_outputs or self.num_outputs
        device = self.head.weight.device
        self.head = nn.Linear(self.feature_dim, out).to(device)


def expect_rank(model: str, input_shape: tuple[int, ...], rank: int, what: str) -> None:
    """A clear DataError when the data's sample shape does not fit the architecture."""
    if len(input_shape) != rank:
        raise DataError(
            f"model '{model}' expects {what} per sample, but the data has samples of shape "
            f"{tuple(input_shape)}; choose a model that fits the data (mlp: vectors, cnn1d: (C, L), resnet: (C, H, W))"
        )


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()
