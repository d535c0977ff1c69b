"""`hf_encoder`: a pretrained Hugging Face transformer encoder from a local directory (offline),
pooled (CLS token or mean over tokens) into features for the linear head.

It takes the (2, max_length) samples of `text_csv`: token ids and attention mask. Its layer
groups are the embeddings and each encoder layer, so freezing, layer-wise learning rates and
gradual unfreezing act on it as on any model. Needs the optional extra: pip install -e ".[hf]".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from transfer_cli.core.errors import CheckpointError, ConfigError, DataError
from transfer_cli.core.registry import Params
from transfer_cli.data.splitting import DataPath
from transfer_cli.models.base import TransferModel
from transfer_cli.models.registry import MODELS
from transfer_cli.runs.provenance import sha256_of

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class HFEncoderParams(Params):
    loads_pretrained: ClassVar[bool] = True  # finetune needs no init_from; pretrain does not apply

    path: DataPath = Field(..., description="local directory with config.json and the weights (offline)")
    pooling: Literal["cls", "mean"] = Field("mean", description="first token, or mean over non-padding tokens")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the pooled features")


class HFBackbone(nn.Module):
    """(N, 2, L) ids + attention mask -> (N, hidden) pooled features."""

    def __init__(self, encoder: nn.Module, pooling: str, dropout: float) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self._ids_checked = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        if not self._ids_checked:  # once: a foreign tokenizer would index past the embeddings
            self._check_ids(ids)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        return self.dropout(pooled)

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = self.encoder.config.vocab_size
        largest = int(ids.max())
        if largest >= vocab or int(ids.min()) < 0:
            raise DataError(f"token id {largest} is outside the model's vocabulary ({vocab} tokens): the data was "
                            f"tokenized with another tokenizer; set data.params.tokenizer to the model directory")
        self._ids_checked = True


class HFEncoderModel(TransferModel):
    def __init__(self, backbone: HFBackbone, directory: Path, groups: list[str], num_outputs: int) -> None:
        super().__init__(backbone, backbone.encoder.config.hidden_size, num_outputs, groups)
        self.directory = directory

    def reinitialize_pretrained(self) -> None:
        """The same architecture, randomly initialised (seeded by the global torch seed)."""
        import transformers

        old = self.backbone.encoder
        fresh = transformers.AutoModel.from_config(old.config).to(dtype=torch.float32,
                                                                 device=next(old.parameters()).device)
        if getattr(fresh, "pooler", None) is not None:
            fresh.pooler = None
        self.backbone.encoder = fresh
        self.directory = None

    def pretrained_lineage(self) -> dict:
        files = [self.directory / name for name in WEIGHT_FILES if (self.directory / name).is_file()]
        weights = files[0]
        lineage = {"pretrained": str(self.directory), "weights": str(weights), "sha256": sha256_of(weights)}
        if weights.name.endswith(".index.json"):  # sharded: the index, and every shard it names
            shards = sorted(set(json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()))
            lineage["shards"] = {name: sha256_of(self.directory / name) for name in shards}
        return lineage


@MODELS.register("hf_encoder", params=HFEncoderParams)
def build_hf_encoder(params: HFEncoderParams, *, input_shape: tuple[int, ...], num_outputs: int) -> TransferModel:
    """A local Hugging Face encoder (pretrained weights), pooled, with a linear head; for text_csv data."""
    if len(input_shape) != 2 or input_shape[0] != 2:
        raise DataError(f"model 'hf_encoder' expects tokenized text, (2, max_length) per sample (ids and mask, as "
                        f"data text_csv makes), but the data has samples of shape {tuple(input_shape)}")
    directory = Path(params.path)
    encoder = load_encoder(directory)
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if positions and input_shape[1] > positions:
        raise DataError(f"data.params.max_length {input_shape[1]} is longer than the model's {positions} positions "
                        f"({directory}); set data.params.max_length <= {positions}")
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: we pool ourselves, and unused parameters only cost memory
    groups = [f"encoder.{name}" for name in layer_groups(encoder, directory)]
    return HFEncoderModel(HFBackbone(encoder, params.pooling, params.dropout), directory, groups, num_outputs)


def load_encoder(directory: Path) -> nn.Module:
    """AutoModel from local files only, in float32; every weight must come from the directory."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory only: never reach for the network
    try:
        import transformers
    except ImportError:
        raise ConfigError(["model.name: hf_encoder needs the optional package 'transformers': "
                           "pip install -e \".[hf]\""]) from None
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"model.params.path: {directory} is not a Hugging Face model directory (no config.json)")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"model.params.path: no weights in {directory} (expected one of "
                              f"{', '.join(WEIGHT_FILES)})")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        encoder, info = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True, **{dtype_key: torch.float32})
    except Exception as exc:  # noqa: BLE001  transformers raises many kinds for a bad directory
        first = str(exc).strip().splitlines()
        reason = first[0] if first else type(exc).__name__
        raise CheckpointError(f"model.params.path: cannot load {directory}: {reason}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        shown = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
        raise CheckpointError(f"model.params.path: the weights in {directory} do not cover the model: missing {shown}")
    return encoder


def layer_groups(encoder: nn.Module, directory: Path) -> list[str]:
    """The embeddings, then each transformer layer (the longest ModuleList), input to output."""
    embeddings = [name for name, _ in encoder.named_children() if "embed" in name]
    lists: list[tuple[str, Any]] = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.ModuleList)]
    if not embeddings or not lists:
        raise CheckpointError(f"model.params.path: cannot find the embeddings and layers of the model in {directory}")
    name, layers = max(lists, key=lambda item: len(item[1]))
    return embeddings[:1] + [f"{name}.{i}" for i in range(len(layers))]
