"""A Hugging Face vision model's own preprocessing, read from its preprocessor_config.json (as
save_pretrained writes it) and said in `image_folder`'s params, so that a pretrained model sees
images prepared as in its training: resize (exact (H, W), or the shorter side), centre crop,
resampling filter, rescale factor, mean and std. Plain JSON: no image processor is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transfer_cli.core.errors import CheckpointError

# PIL's filter codes, as transformers stores them
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
FILE = "preprocessor_config.json"


def image_preprocessing(directory: Path) -> dict[str, Any]:
    """image_folder params from the folder's preprocessor_config.json; {} when it has none."""
    file = directory / FILE
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"model.params.path: cannot read {file} as JSON ({exc})") from None
    out: dict[str, Any] = {}
    resize, crop = _resize(config), _crop(config)
    if resize is not None:
        out["resize"] = resize
    if crop is not None or resize is not None:
        out["size"] = crop or (resize if isinstance(resize, list) else [resize, resize])
    if config.get("resample") in RESAMPLE:
        out["resample"] = RESAMPLE[config["resample"]]
    out["rescale"] = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    if config.get("do_normalize", True) and config.get("image_mean") is not None:
        out["mean"], out["std"] = _per_channel(config["image_mean"]), _per_channel(config.get("image_std", 1.0))
    return out


def _resize(config: dict) -> int | list[int] | None:
    """An exact [H, W], or the shorter side (an int); ConvNeXt's crop_pct scales the shorter side
    up so that the centre crop keeps that share of the image (transformers' rule: below 384)."""
    size = config.get("size")
    if not config.get("do_resize", True) or size is None:
        return None
    if isinstance(size, int):
        return [size, size]
    if "height" in size and "width" in size:
        return [int(size["height"]), int(size["width"])]
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        pct = config.get("crop_pct")
        if pct:
            return int(edge / pct) if edge < 384 else [edge, edge]
        return edge
    return None


def _crop(config: dict) -> list[int] | None:
    crop = config.get("crop_size")
    if config.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
        return [int(crop["height"]), int(crop["width"])]
    if config.get("do_center_crop") and isinstance(crop, int):
        return [crop, crop]
    size = config.get("size")
    if config.get("crop_pct") and isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        return [edge, edge] if edge < 384 else None
    return None


def _per_channel(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
