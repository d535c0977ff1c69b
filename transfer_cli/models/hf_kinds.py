"""Which kind of Hugging Face model a local folder holds, read from its config.json (offline).

Three kinds are used, each with its own input and pooling (see hf_encoder):

    text      encoders taking input_ids (BERT, RoBERTa, MiniLM, ...): (2, L) ids + mask
    vision    models taking pixel_values (ViT, DeiT, BEiT, DINOv2, ConvNeXt, ResNet, Swin, ...): (C, H, W)
    decoder   decoder-only language models (GPT-2, Llama, Qwen2, Mistral, ...): (2, L) ids + mask,
              pooled on the last non-padding token

The kind comes from transformers' own tables (the class AutoModel would build and its
`main_input_name`; a model type with a causal-LM class and no masked-LM class is a decoder), so a
new architecture of a known kind works without a list here. Encoder-decoder and multimodal models,
and models of other inputs (audio), are refused with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transfer_cli.core.errors import CheckpointError, ConfigError

TESTED = {"text": ("bert",), "vision": ("vit", "deit", "beit", "dinov2", "convnext", "resnet", "swin"),
          "decoder": ("gpt2", "llama", "qwen2")}
SUPPORTED = ("text encoders taking input_ids (e.g. bert), vision models taking pixel_values (e.g. "
             f"{', '.join(TESTED['vision'])}) and decoder-only language models (e.g. {', '.join(TESTED['decoder'])})")


@dataclass(frozen=True)
class HFKind:
    model_type: str
    kind: str  # text | vision | decoder


def transformers_module():  # noqa: ANN201  the module, imported only when a Hugging Face model is used
    try:
        import transformers
    except ImportError:
        raise ConfigError(["model.name: hf_encoder needs the optional package 'transformers': "
                           "pip install -e \".[hf]\""]) from None
    return transformers


def read_config(directory: Path) -> dict:
    file = directory / "config.json"
    if not file.is_file():
        raise CheckpointError(f"model.params.path: {directory} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"model.params.path: cannot read {file} as JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"model.params.path: {file} has no model_type; expected a config.json written by "
                              f"save_pretrained")
    return config


def model_kind(directory: Path) -> HFKind:
    """The kind of the model in `directory`; a CheckpointError naming model_type when unsupported."""
    return config_kind(read_config(directory), f"model.params.path: {directory} holds")


def config_kind(config: dict, where: str) -> HFKind:
    """The kind of the model that `config` (config.json's keys) describes; `where` starts the
    error line (e.g. "model.params.path: DIR holds")."""
    model_type = config["model_type"]
    transformers = transformers_module()
    from transformers.models.auto import modeling_auto as auto

    class_name = auto.MODEL_MAPPING_NAMES.get(model_type)
    if class_name is None:
        return _unsupported(where, model_type, "transformers has no AutoModel class for it")
    # the model type's defaults under the given keys: an inline config leaves out what they say
    # (a T5's is_encoder_decoder, a CLIP's text_config and vision_config)
    config = {**transformers.AutoConfig.for_model(model_type).to_dict(), **config}
    if config.get("is_encoder_decoder"):
        return _unsupported(where, model_type, "it is an encoder-decoder model")
    if "text_config" in config and "vision_config" in config:
        return _unsupported(where, model_type, "it is a multimodal (text and vision) model")
    main_input = getattr(getattr(transformers, class_name, None), "main_input_name", None)
    if main_input == "pixel_values":
        return HFKind(model_type, "vision")
    if main_input == "input_ids":
        causal = model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        masked = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
        return HFKind(model_type, "decoder" if causal and not masked else "text")
    return _unsupported(where, model_type, f"it takes {main_input or 'an unknown input'}")


def _unsupported(where: str, model_type: str, why: str) -> HFKind:
    raise CheckpointError(f"{where} a model of model_type '{model_type}', which hf_encoder cannot use ({why}); "
                          f"supported: {SUPPORTED}")
