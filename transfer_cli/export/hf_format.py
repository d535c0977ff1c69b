"""`--format hf`: a folder that transformers loads with AutoModelForSequenceClassification (text)
or AutoModelForImageClassification (vision), for an `hf_encoder` run: config.json with
id2label/label2id, model.safetensors, and the tokenizer for text.

Our model is encoder -> pooling -> linear head. The HF classes put their own head on the encoder;
the ones reproduced here compute our function exactly up to float rounding:
- text: BERT's (BertPooler: dense + tanh on the first token, then the classifier) with
  `pooling: cls`. The pooler's dense becomes EPS * identity, where tanh is linear (relative error
  (EPS * h)^2 / 3 < 1e-8 for |h| < 10), and the classifier our head divided by EPS.
- vision: ViT and DeiT classify the first token of the normed sequence (our `cls`/`model`
  pooling of them); ConvNeXt, ResNet, Swin and BEiT their pooler's output (our `model`); DINOv2
  the first token concatenated with the patch tokens' mean, so our head fills the first half of
  its classifier and zeros the second.
Other poolings and model types have no HF counterpart: refused, naming what would work. Checked
by loading the folder back and comparing outputs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from transfer_cli.core.errors import UsageError
from transfer_cli.export.check import max_abs_diff, round_trip

EPS = 1e-4
TEXT = {"bert": "BertForSequenceClassification"}
#: model_type -> (class, the poolings of ours it reproduces)
VISION = {"vit": ("ViTForImageClassification", ("cls", "model")),
          "deit": ("DeiTForImageClassification", ("cls", "model")),
          "convnext": ("ConvNextForImageClassification", ("model",)),
          "resnet": ("ResNetForImageClassification", ("model",)),
          "swin": ("SwinForImageClassification", ("model",)),
          "beit": ("BeitForImageClassification", ("model",)),
          "dinov2": ("Dinov2ForImageClassification", ("model",))}
PROBLEM = {"multiclass": "single_label_classification", "binary": "multi_label_classification",
           "multilabel": "multi_label_classification", "regression": "regression"}
OTHERS = "use --format onnx, torchscript or safetensors"


def check_model_name(model_name: str) -> None:
    """Before any work: --format hf needs a Hugging Face model."""
    if model_name != "hf_encoder":
        raise UsageError(f"--format hf: the run's model is '{model_name}', not a Hugging Face model (hf_encoder); "
                         f"{OTHERS}")


def check_mappable(model: torch.nn.Module) -> None:
    """Once the model is built: its encoder and pooling have an HF counterpart, or one line why not."""
    backbone = model.backbone
    model_type = backbone.encoder.config.model_type
    supported = TEXT if backbone.kind != "vision" else {k: v[0] for k, v in VISION.items()}
    if model_type not in supported:
        raise UsageError(f"--format hf: {backbone.kind} model_type '{model_type}' is not supported (supported: "
                         f"{', '.join(supported)}): its classification head cannot reproduce ours exactly; {OTHERS}")
    poolings = ("cls",) if backbone.kind != "vision" else VISION[model_type][1]
    if backbone.pooling not in poolings:
        raise UsageError(f"--format hf: the run pools with '{backbone.pooling}', but {supported[model_type]} "
                         f"pools as model.params.pooling: {poolings[0]} does, so it would compute another function; "
                         f"fine-tune with that pooling, or {OTHERS}")


def export_hf(model: torch.nn.Module, check: torch.Tensor, folder: Path, spec: dict, tokenizer: Any) -> dict:
    import transformers

    os.environ["HF_HUB_OFFLINE"] = "1"
    # plain lines: a run of a weightless architecture never loaded a folder, which turned them off before
    transformers.utils.logging.disable_progress_bar()
    vision = model.backbone.kind == "vision"
    hf = _build(model, spec, transformers)
    auto = transformers.AutoModelForImageClassification if vision else transformers.AutoModelForSequenceClassification
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(folder), safe_serialization=True)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, folder, transformers)
        loaded = auto.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        theirs = (loaded(pixel_values=check) if vision else
                  loaded(input_ids=check[:, 0], attention_mask=check[:, 1])).logits
        ours = model(check)
    facts = round_trip(f"transformers {transformers.__version__} {type(loaded).__name__}", max_abs_diff(ours, theirs),
                       len(check))
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return {"files": files, "check": facts, "class": type(loaded).__name__,
            **({} if vision else {"pooler_scale": EPS})}


def _build(model: torch.nn.Module, spec: dict, transformers: Any) -> torch.nn.Module:
    encoder = model.backbone.encoder
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    names = spec["class_names"] or [f"output_{i}" for i in range(model.num_outputs)]
    config.num_labels = model.num_outputs
    config.id2label = {i: name for i, name in enumerate(names)}
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = PROBLEM[spec["task"]]
    vision = model.backbone.kind == "vision"
    class_name = VISION[config.model_type][0] if vision else TEXT[config.model_type]
    config.architectures = [class_name]
    hf = getattr(transformers, class_name)(config).eval()
    state = _vision_state(model, hf) if vision else _bert_state(model)
    result = hf.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise UsageError(f"--format hf: the encoder's weights do not map onto {class_name} "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return hf


def _bert_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"bert.{k}": v for k, v in model.backbone.encoder.state_dict().items()}
    hidden = model.feature_dim
    state["bert.pooler.dense.weight"] = EPS * torch.eye(hidden)
    state["bert.pooler.dense.bias"] = torch.zeros(hidden)
    state["classifier.weight"] = model.head.weight.detach() / EPS
    state["classifier.bias"] = model.head.bias.detach().clone()
    return state


def _vision_state(model: torch.nn.Module, hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder under the HF class's base-model prefix, our head as its classifier."""
    prefix = hf.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in model.backbone.encoder.state_dict().items()}
    classifier = next(name for name, module in hf.named_modules()
                      if isinstance(module, torch.nn.Linear) and name.startswith("classifier"))
    weight, bias = model.head.weight.detach(), model.head.bias.detach().clone()
    wanted = dict(hf.named_parameters())[f"{classifier}.weight"].shape
    if wanted[1] == 2 * weight.shape[1]:  # DINOv2: [first token, mean of the patch tokens]
        weight = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    state[f"{classifier}.weight"], state[f"{classifier}.bias"] = weight.clone(), bias
    return state


def _save_tokenizer(tokenizer: Any, folder: Path, transformers: Any) -> None:
    """tokenizer.json plus transformers' tokenizer_config.json, so AutoTokenizer loads the folder."""
    padding = tokenizer.padding or {}
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=padding.get("pad_token"),
                                                model_max_length=padding.get("length"))
    for token in ("[CLS]", "[SEP]", "[UNK]", "[MASK]"):
        if tokenizer.token_to_id(token) is not None:
            setattr(fast, {"[CLS]": "cls_token", "[SEP]": "sep_token", "[UNK]": "unk_token",
                           "[MASK]": "mask_token"}[token], token)
    fast.save_pretrained(str(folder))
