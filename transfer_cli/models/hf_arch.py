"""The architecture of an `hf_encoder`: the keys of a folder's config.json, with the config given
inline (`model.params.config`) over them, checked key by key, and the model built from it:
randomly initialised (seeded by the global torch seed, which the run's seed sets) when there are
no weights to load, for `transfer pretrain` from a config.

A pretrain run records the architecture inline in its config.yaml (`recorded_architecture`), so a
later stage (finetune --init-from, evaluate, export) rebuilds the model from the run alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from transfer_cli.core.errors import CheckpointError, one_line
from transfer_cli.core.registry import did_you_mean
from transfer_cli.models.hf_kinds import read_config, transformers_module

#: config.json keys that say where a model came from, not what it is
NOT_ARCHITECTURE = ("transformers_version", "_name_or_path", "architectures")


def architecture(directory: Optional[Path], inline: Optional[dict[str, Any]]) -> dict[str, Any]:
    """config.json's keys (when a folder is given), the inline keys over them."""
    config = dict(read_config(directory)) if directory is not None else {}
    config.update(inline or {})
    return config


def check_keys(inline: dict[str, Any], model_type: str) -> None:
    """A key the model type's config does not know is a typo (transformers would keep it
    silently as an attribute that nothing reads)."""
    known = known_keys(model_type)
    for key in inline:
        if key not in known:
            own = [k for k in own_keys(model_type) if k != "model_type"]
            shown = ", ".join(own[:8]) + (", ..." if len(own) > 8 else "")
            raise CheckpointError(f"model.params.config.{key}: not a key of a {model_type} config"
                                  f"{did_you_mean(key, sorted(known))}; its keys are those of its config.json "
                                  f"({shown})")


def own_keys(model_type: str) -> list[str]:
    """The keys of the model type's config, in its order, without those every config has."""
    transformers = transformers_module()
    generic = set(transformers.PretrainedConfig().to_dict())
    return [k for k in transformers.AutoConfig.for_model(model_type).to_dict() if k not in generic]


def known_keys(model_type: str) -> set[str]:
    transformers = transformers_module()
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    return (set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
            | set(transformers.PretrainedConfig().to_dict()))


def config_object(config: dict[str, Any], where: str):  # noqa: ANN201  a transformers PretrainedConfig
    transformers = transformers_module()
    model_type = config["model_type"]
    kwargs = {k: v for k, v in config.items() if k != "model_type" and k not in NOT_ARCHITECTURE}
    try:
        return transformers.AutoConfig.for_model(model_type, **kwargs)
    except Exception as exc:  # noqa: BLE001  the config class's own complaint about a value
        raise CheckpointError(f"{where}: not a valid {model_type} config ({one_line(exc)})") from None


def fresh_encoder(config: dict[str, Any], where: str) -> nn.Module:
    """The architecture, randomly initialised in float32 (the global torch seed decides the weights)."""
    transformers = transformers_module()
    transformers.logging.set_verbosity_error()
    cfg = config_object(config, where)
    try:
        encoder = transformers.AutoModel.from_config(cfg)
    except Exception as exc:  # noqa: BLE001  e.g. a hidden size the heads do not divide
        raise CheckpointError(f"{where}: cannot build a {config['model_type']} model from it "
                              f"({one_line(exc)})") from None
    return encoder.to(torch.float32)


def recorded_architecture(encoder: nn.Module) -> dict[str, Any]:
    """What differs from the model type's defaults (as save_pretrained writes config.json), without
    where it came from: enough for `fresh_encoder` to build the same architecture again."""
    config = encoder.config.to_diff_dict()
    known = known_keys(config["model_type"])
    return {k: v for k, v in config.items() if k in known and k not in NOT_ARCHITECTURE}
