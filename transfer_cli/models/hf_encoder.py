"""`hf_encoder`: a pretrained Hugging Face model from a local directory (offline), of any of the
kinds `hf_kinds` reads from its config.json, pooled into features for the linear head.

    text      (2, L) ids + mask (text_csv)   pooled: mean over non-padding tokens, or the first token
    vision    (C, H, W) images               pooled: the model's own pooling (its pooler output, a norm
                                             or average pool), or the first token where its pooler is a
                                             trained projection (ViT, DeiT), which we drop
    decoder   (2, L) ids + mask (text_csv)   pooled: the last non-padding token (the only one that has
                                             seen the whole text in a causal model)

Without weights (a folder with config.json only, or `params.config` inline: see hf_arch) the
architecture is randomly initialised, for `transfer pretrain`; a pretrain run records it inline.
Its layer groups (`hf_groups`) cover every parameter, so freezing, layer-wise learning rates and
gradual unfreezing act on it as on any model. Needs the optional extra: pip install -e ".[hf]".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from transfer_cli.core.errors import CheckpointError, DataError, one_line
from transfer_cli.core.registry import Params
from transfer_cli.data.splitting import DataPath
from transfer_cli.models.base import TransferModel
from transfer_cli.models.hf_arch import (architecture, check_keys, config_object, fresh_encoder,
                                         recorded_architecture)
from transfer_cli.models.hf_groups import layer_groups
from transfer_cli.models.hf_preprocess import image_preprocessing
from transfer_cli.models.hf_kinds import HFKind, config_kind, transformers_module
from transfer_cli.models.registry import MODELS
from transfer_cli.runs.provenance import sha256_of

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
POOLING = {"text": ("mean", "cls"), "vision": ("model", "cls", "mean"), "decoder": ("last", "mean")}


class HFEncoderParams(Params):
    path: Optional[DataPath] = Field(None, description="local directory with config.json and, unless it is to be "
                                                       "pretrained from random initialisation, the weights (offline)")
    config: Optional[dict[str, Any]] = Field(
        None, description="the architecture inline (config.json's keys, with model_type), randomly initialised; with "
                          "path: these keys override the folder's config.json")
    pooling: Literal["auto", "cls", "mean", "last", "model"] = Field(
        "auto", description="auto: mean (text encoders), model (vision: the model's own pooling), last (decoders); "
                            "cls: first token; mean: over non-padding tokens (or positions); last: last non-padding "
                            "token")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the pooled features")
    preprocessing: Optional[dict[str, Any]] = Field(
        None, description="a vision model's own preprocessing as image_folder params, over the folder's "
                          "preprocessor_config.json; a pretrain run records the folder's here (its path is null)")

    @model_validator(mode="after")
    def _architecture_given(self) -> "HFEncoderParams":
        if self.path is None and self.config is None:
            raise ValueError("give path (a model folder with config.json) or config (the architecture inline, "
                             "e.g. {model_type: vit, hidden_size: 32, ...})")
        if self.path is None and not isinstance((self.config or {}).get("model_type"), str):
            raise ValueError("config: model_type is required (e.g. vit, bert, gpt2) when no path is given")
        return self

    @staticmethod
    def loads_pretrained(params: dict) -> bool:
        """Whether the model brings its own weights (finetune then needs no init_from): a folder, unless it
        holds a config.json and no weights (a folder that is not a model one is the builder's to explain)."""
        folder = Path(params["path"]) if params.get("path") else None
        return folder is not None and not ((folder / "config.json").is_file() and not has_weights(folder))

    @staticmethod
    def data_defaults(params: dict, data_name: str) -> dict:
        """A vision model's own preprocessing as image_folder params (see hf_preprocess)."""
        return own_preprocessing(params) if data_name == "image_folder" else {}


class HFBackbone(nn.Module):
    """Text and decoder kinds: (N, 2, L) ids + attention mask -> (N, hidden) pooled features.
    Vision: (N, C, H, W) -> (N, features)."""

    def __init__(self, encoder: nn.Module, kind: str, pooling: str, dropout: float) -> None:
        super().__init__()
        self.encoder, self.kind, self.pooling = encoder, kind, pooling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self._ids_checked = kind == "vision"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "vision":
            return self.dropout(self._pool_image(self.encoder(pixel_values=x)))
        ids, mask = x[:, 0], x[:, 1]
        if not self._ids_checked:  # once: a foreign tokenizer would index past the embeddings
            self._check_ids(ids)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # the last 1 of the mask: right or left padding alike
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        return self.dropout(pooled)

    def _pool_image(self, out) -> torch.Tensor:  # noqa: ANN001  a transformers ModelOutput
        if self.pooling == "model" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # (N, C, h, w) feature maps: average over positions
            return hidden.mean((2, 3))
        return hidden[:, 0] if self.pooling in ("cls", "model") else hidden.mean(1)

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = self.encoder.config.vocab_size
        largest = int(ids.max())
        if largest >= vocab or int(ids.min()) < 0:
            raise DataError(f"token id {largest} is outside the model's vocabulary ({vocab} tokens): the data was "
                            f"tokenized with another tokenizer; set data.params.tokenizer to the model directory")
        self._ids_checked = True


class HFEncoderModel(TransferModel):
    def __init__(self, backbone: HFBackbone, directory: Optional[Path], groups: list[str], feature_dim: int,
                 num_outputs: int) -> None:
        super().__init__(backbone, feature_dim, num_outputs, groups)
        self.directory = directory  # where the weights came from; None: randomly initialised

    def reinitialize_pretrained(self) -> None:
        """The same architecture, randomly initialised (seeded by the global torch seed)."""
        transformers = transformers_module()
        old = self.backbone.encoder
        fresh = transformers.AutoModel.from_config(old.config).to(dtype=torch.float32,
                                                                 device=next(old.parameters()).device)
        self.backbone.encoder = drop_unused_pooler(fresh, self.backbone.pooling)
        self.directory = None

    def recorded_params(self, params: dict) -> dict:
        """The architecture inline instead of the folder: a later stage needs the run alone."""
        return {**params, "path": None, "config": recorded_architecture(self.backbone.encoder),
                "preprocessing": own_preprocessing(params) or None}

    def checkpointing_units(self) -> list[nn.Module]:
        """The blocks the model's own switch checkpoints, else (no switch) the layer groups."""
        if not self._has_own_checkpointing():
            return super().checkpointing_units()
        from transformers.modeling_layers import GradientCheckpointingLayer

        units: list[tuple[str, nn.Module]] = []
        for name, module in self.backbone.encoder.named_modules():  # the outermost (Swin: stages, not their blocks)
            if isinstance(module, GradientCheckpointingLayer) and not any(name.startswith(f"{u}.") for u, _ in units):
                units.append((name, module))
        return [module for _, module in units]

    def _has_own_checkpointing(self) -> bool:
        return bool(getattr(self.backbone.encoder, "supports_gradient_checkpointing", False))

    def enable_activation_checkpointing(self) -> str:
        """The model's own switch where it has one (its blocks), else per layer group."""
        encoder = self.backbone.encoder
        if not self._has_own_checkpointing():
            return super().enable_activation_checkpointing()
        kwargs = {"use_reentrant": False}  # a frozen prefix: inputs that do not require grad
        if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return f"the model's own gradient checkpointing ({encoder.config.model_type})"

    def pretrained_lineage(self) -> dict | None:
        if self.directory is None:
            return None
        files = [self.directory / name for name in WEIGHT_FILES if (self.directory / name).is_file()]
        weights = files[0]
        lineage = {"pretrained": str(self.directory), "weights": str(weights), "sha256": sha256_of(weights),
                   "model_type": self.backbone.encoder.config.model_type, "kind": self.backbone.kind}
        if weights.name.endswith(".index.json"):  # sharded: the index, and every shard it names
            shards = sorted(set(json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()))
            lineage["shards"] = {name: sha256_of(self.directory / name) for name in shards}
        return lineage


@MODELS.register("hf_encoder", params=HFEncoderParams)
def build_hf_encoder(params: HFEncoderParams, *, input_shape: tuple[int, ...], num_outputs: int) -> TransferModel:
    """A local Hugging Face model of any supported kind, pooled, with a linear head: its pretrained
    weights when the folder has them, else randomly initialised from its config (and `params.config`)."""
    directory = Path(params.path) if params.path else None
    where = f"model.params.path: {directory}" if directory else "model.params.config"
    if len(input_shape) not in (2, 3):  # neither kind: say so before looking at the folder
        raise DataError(f"model 'hf_encoder' expects tokenized text, (2, max_length) per sample (ids and mask, as "
                        f"data text_csv makes), or images, (C, H, W) per sample (as data image_folder makes), but "
                        f"the data has samples of shape {tuple(input_shape)}")
    config = architecture(directory, params.config)
    kind = config_kind(config, f"{where} holds" if directory else f"{where} describes")
    if params.config:
        check_keys(params.config, kind.model_type)
    pooling = resolve_pooling(kind, params.pooling)
    source = directory or "model.params.config"
    check_input(kind, input_shape, source)
    weighted = directory is not None and has_weights(directory)
    encoder = load_encoder(directory, config if params.config else None) if weighted else fresh_encoder(config, where)
    encoder = drop_unused_pooler(encoder, pooling)
    check_fits(encoder, kind, input_shape, source)
    backbone = HFBackbone(encoder, kind.kind, pooling, params.dropout)
    groups = [f"encoder.{name}" for name in layer_groups(encoder, source)]
    return HFEncoderModel(backbone, directory if weighted else None, groups,
                          feature_dim(backbone, input_shape, source), num_outputs)


def own_preprocessing(params: dict) -> dict:
    """The folder's preprocessor_config.json as image_folder params, `preprocessing` over it."""
    path = params.get("path")
    return {**(image_preprocessing(Path(path)) if path else {}), **(params.get("preprocessing") or {})}


def has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def resolve_pooling(kind: HFKind, pooling: str) -> str:
    allowed = POOLING[kind.kind]
    if pooling == "auto":
        return allowed[0]
    if pooling not in allowed:
        raise CheckpointError(f"model.params.pooling: '{pooling}' does not apply to a {kind.kind} model "
                              f"({kind.model_type}); use auto or one of {', '.join(allowed)}")
    return pooling


def check_input(kind: HFKind, input_shape: tuple[int, ...], directory: Path | str) -> None:
    if kind.kind == "vision":
        if len(input_shape) != 3:
            raise DataError(f"model 'hf_encoder' ({kind.model_type} in {directory}) expects images, (C, H, W) per "
                            f"sample (e.g. data image_folder), but the data has samples of shape {tuple(input_shape)}")
    elif len(input_shape) != 2 or input_shape[0] != 2:
        raise DataError(f"model 'hf_encoder' expects tokenized text, (2, max_length) per sample (ids and mask, as "
                        f"data text_csv makes), but the data has samples of shape {tuple(input_shape)}")


def check_fits(encoder: nn.Module, kind: HFKind, input_shape: tuple[int, ...], directory: Path | str) -> None:
    config = encoder.config
    if kind.kind == "vision":
        channels = getattr(config, "num_channels", None)
        if channels and input_shape[0] != channels:
            raise DataError(f"the model in {directory} takes {channels}-channel images (num_channels in its "
                            f"config.json), but the data has {input_shape[0]}; set data.params.mode: "
                            f"{'RGB' if channels == 3 else 'L'}")
        return
    positions = getattr(config, "max_position_embeddings", None)
    if positions and input_shape[1] > positions:
        raise DataError(f"data.params.max_length {input_shape[1]} is longer than the model's {positions} positions "
                        f"({directory}); set data.params.max_length <= {positions}")


def feature_dim(backbone: HFBackbone, input_shape: tuple[int, ...], directory: Path | str) -> int:
    """Text kinds: the hidden size. Vision: measured on one blank image, which also proves now,
    before any training, that the model takes images of this size."""
    if backbone.kind != "vision":
        return backbone.encoder.config.hidden_size
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            return int(backbone(torch.zeros(1, *input_shape)).shape[1])
    except Exception as exc:  # noqa: BLE001  the model's own complaint (e.g. an image size it cannot take)
        first = str(exc).strip().splitlines()
        size = getattr(backbone.encoder.config, "image_size", None)
        hint = f"; its config says image_size {size}: set data.params.size: {size}" if isinstance(size, int) else ""
        raise DataError(f"the model in {directory} cannot take images of shape {tuple(input_shape)} "
                        f"({first[0] if first else type(exc).__name__}){hint}") from None
    finally:
        backbone.train(was_training)


def drop_unused_pooler(encoder: nn.Module, pooling: str) -> nn.Module:
    """The pooler goes unless we pool with it: unused parameters only cost memory (and a pooler
    with a trained projection, as ViT's and BERT's, is a head for another task)."""
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None and (pooling != "model" or any(isinstance(m, nn.Linear) for m in pooler.modules())):
        encoder.pooler = None
    return encoder


def load_encoder(directory: Path, overrides: Optional[dict] = None) -> nn.Module:
    """AutoModel from local files only, in float32; every weight must come from the directory.
    `overrides`: the whole architecture when model.params.config changes the folder's."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory only: never reach for the network
    transformers = transformers_module()
    transformers.logging.set_verbosity_error()
    extra = {"config": config_object(overrides, "model.params.config")} if overrides else {}
    transformers.utils.logging.disable_progress_bar()
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        encoder, info = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True, **{dtype_key: torch.float32}, **extra)
    except Exception as exc:  # noqa: BLE001  transformers raises many kinds for a bad directory
        reason = one_line(exc)
        if "ignore_mismatched_sizes" in reason:  # transformers' line points at a report we keep quiet
            reason = "its weights have other shapes than the architecture"
        hint = ("; model.params.config may change only what keeps the weights' shapes (e.g. dropout) when the "
                "folder has weights: drop the keys that change them, or pretrain from random initialisation "
                "(config alone, without path)") if overrides else ""
        raise CheckpointError(f"model.params.path: cannot load {directory}: {reason}{hint}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        shown = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
        raise CheckpointError(f"model.params.path: the weights in {directory} do not cover the model: missing {shown}")
    return encoder
