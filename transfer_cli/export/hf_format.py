"""`--format hf`: a folder that transformers' AutoModelForSequenceClassification loads, for an
`hf_encoder` run: config.json with id2label/label2id, model.safetensors, the tokenizer.

Our model is encoder -> pooling -> linear head. The HF classes put their own head on the encoder,
and only one of them is reproduced here, exactly up to float rounding: BERT's (BertPooler: dense +
tanh on the first token, then the classifier) with `pooling: cls`. The pooler's dense becomes
EPS * identity, where tanh is linear (relative error (EPS * h)^2 / 3 < 1e-8 for |h| < 10), and the
classifier our head divided by EPS. Mean pooling, or another model type, has no HF counterpart:
refused, naming what would work. Checked by loading the folder back and comparing logits.
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
SUPPORTED = {"bert": "BertForSequenceClassification"}
PROBLEM = {"multiclass": "single_label_classification", "binary": "multi_label_classification",
           "multilabel": "multi_label_classification", "regression": "regression"}


def check_model_name(model_name: str) -> None:
    """Before any work: --format hf needs a Hugging Face encoder."""
    if model_name != "hf_encoder":
        raise UsageError(f"--format hf: the run's model is '{model_name}', not a Hugging Face encoder (hf_encoder); "
                         f"use --format onnx, torchscript or safetensors")


def check_mappable(model: torch.nn.Module) -> None:
    """Once the model is built: its encoder and pooling have an HF counterpart, or one line why not."""
    model_type = model.backbone.encoder.config.model_type
    if model_type not in SUPPORTED:
        raise UsageError(f"--format hf: model_type '{model_type}' is not supported (supported: "
                         f"{', '.join(SUPPORTED)}): its sequence-classification head cannot reproduce ours exactly; "
                         f"use --format onnx, torchscript or safetensors")
    if model.backbone.pooling != "cls":
        raise UsageError(f"--format hf: the run pools with '{model.backbone.pooling}', but {SUPPORTED[model_type]} "
                         f"classifies the first token, so it would compute another function; fine-tune with "
                         f"model.params.pooling: cls, or use --format onnx, torchscript or safetensors")


def export_hf(model: torch.nn.Module, check: torch.Tensor, folder: Path, spec: dict, tokenizer: Any) -> dict:
    import transformers

    os.environ["HF_HUB_OFFLINE"] = "1"
    hf = _build(model, spec, transformers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(folder), safe_serialization=True)
        _save_tokenizer(tokenizer, folder, transformers)
        loaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        theirs = loaded.eval()(input_ids=check[:, 0], attention_mask=check[:, 1]).logits
        ours = model(check)
    facts = round_trip(f"transformers {transformers.__version__} {type(loaded).__name__}", max_abs_diff(ours, theirs),
                       len(check))
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return {"files": files, "check": facts, "class": type(loaded).__name__, "pooler_scale": EPS}


def _build(model: torch.nn.Module, spec: dict, transformers: Any) -> torch.nn.Module:
    encoder = model.backbone.encoder
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    names = spec["class_names"] or [f"output_{i}" for i in range(model.num_outputs)]
    config.num_labels = model.num_outputs
    config.id2label = {i: name for i, name in enumerate(names)}
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = PROBLEM[spec["task"]]
    config.architectures = [SUPPORTED[config.model_type]]
    hf = getattr(transformers, SUPPORTED[config.model_type])(config).eval()
    state = {f"bert.{k}": v for k, v in encoder.state_dict().items()}
    hidden = model.feature_dim
    state["bert.pooler.dense.weight"] = EPS * torch.eye(hidden)
    state["bert.pooler.dense.bias"] = torch.zeros(hidden)
    state["classifier.weight"] = model.head.weight.detach() / EPS
    state["classifier.bias"] = model.head.bias.detach().clone()
    result = hf.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise UsageError(f"--format hf: the encoder's weights do not map onto {SUPPORTED[config.model_type]} "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return hf


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
