"""What a consumer of a trained model must apply to raw inputs, read from what the run recorded.

One dict (`preprocess.json` in an export folder; `transfer predict` reads the same), built from
the run's resolved `config.yaml` (the data params, including what the source fitted on the
training data: class order, CSV features and standardisation, image mean/std) and `run.json`
(task, class names, sample shape and dtype). Nothing here imports torch.

    {"schema_version": 1, "task", "class_names", "num_outputs",
     "input": {"kind": table|image|text|tensor, "shape": [null, ...], "dtype"},
     "output": {"kind": "logits", "activation": softmax|sigmoid|none, "threshold"},
     "data": {"name"}, and one section for the kind: "csv" | "image" | "text" | "tensors"}
"""

from __future__ import annotations

from typing import Any

from transfer_cli.core.errors import CheckpointError

SCHEMA_VERSION = 1
KINDS = {"csv": "table", "image_folder": "image", "text_csv": "text"}  # every other source: tensor
ACTIVATION = {"multiclass": "softmax", "binary": "sigmoid", "multilabel": "sigmoid", "regression": "none"}


def preprocess_spec(config: dict[str, Any], run_info: dict[str, Any], where: str = "the run") -> dict[str, Any]:
    """The preprocessing dict of a run, from its config.yaml and run.json contents."""
    info = run_info.get("data") or {}
    data = config.get("data") or {}
    if not info.get("task") or not info.get("input_shape") or not data.get("name"):
        raise CheckpointError(f"{where}: run.json/config.yaml do not record the data's task and input shape; "
                              f"it was not written by a complete run (run the stage again)")
    name, params = data["name"], data.get("params") or {}
    task = info["task"]
    kind = KINDS.get(name, "tensor")
    dtype = info.get("input_dtype") or ("int64" if kind == "text" else "float32")  # runs from before it was kept
    threshold = (config.get("eval") or {}).get("threshold")
    spec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": task, "class_names": info.get("class_names"),
        "num_outputs": info.get("num_outputs"),
        "input": {"kind": kind, "shape": [None, *info["input_shape"]], "dtype": dtype},
        "output": {"kind": "logits", "activation": ACTIVATION[task],
                   "threshold": (0.5 if threshold is None else threshold) if task in ("binary", "multilabel") else None},
        "data": {"name": name},
    }
    section = {"table": _csv, "image": _image, "text": _text, "tensor": _tensors}[kind]
    spec[{"table": "csv", "image": "image", "text": "text", "tensor": "tensors"}[kind]] = section(params, name)
    return spec


def _csv(params: dict, name: str) -> dict:
    standardize = bool(params.get("standardize", True))
    return {"features": params.get("features"), "delimiter": params.get("delimiter", ","),
            "standardize": standardize, "mean": params.get("mean") if standardize else None,
            "std": params.get("std") if standardize else None,
            "formula": "x[j] = (float(row[features[j]]) - mean[j]) / std[j]" if standardize
            else "x[j] = float(row[features[j]])"}


def _image(params: dict, name: str) -> dict:
    size = params.get("size", 224)
    size = [size, size] if isinstance(size, int) else list(size)
    mode = params.get("mode", "RGB")
    normalize = bool(params.get("normalize", True))
    resize = params.get("resize")
    resample = params.get("resample") or "bilinear"  # the run's filter (a vision model's own, when it brought one)
    scale = params.get("rescale") or 1 / 255
    exact = isinstance(resize, list)  # an exact [height, width], aspect ratio not kept (as ViT's processors do)
    return {"size": size, "resize": resize, "mode": mode, "channels": 1 if mode == "L" else 3,
            "resample": resample, "crop": "center", "scale": scale, "normalize": normalize,
            "mean": params.get("mean") if normalize else None, "std": params.get("std") if normalize else None,
            "steps": ["convert to mode",
                      f"resize ({resample}) to exactly `resize` (H, W), aspect not kept" if exact else
                      f"resize ({resample}, aspect kept) to the smallest size covering `size` (and with the "
                      f"shorter side >= `resize` when set)", "centre crop to `size` (H, W)", f"pixels * {scale:.6g}",
                      "(x - mean) / std per channel" if normalize else "no normalisation", "layout (C, H, W)"]}


def _text(params: dict, name: str) -> dict:
    return {"column": params.get("text"), "tokenizer": params.get("tokenizer"), "max_length": params.get("max_length"),
            "pad_token": params.get("pad_token"),  # fitted at training: the tokenizer's own or the one chosen
            "layout": "x[:, 0] token ids, x[:, 1] attention mask (1 = token, 0 = padding), each padded and "
                      "truncated to max_length"}


def _tensors(params: dict, name: str) -> dict:
    if name != "tensors":  # a built-in, generated data set: the samples are fed as they are
        return {"source": name, "note": "samples as the data set generates them; no preprocessing"}
    return {"x_key": params.get("x_key", "x"), "add_channel": bool(params.get("add_channel", False)),
            "note": "arrays as the model saw them: float arrays as float32, uint8 arrays / 255"}
