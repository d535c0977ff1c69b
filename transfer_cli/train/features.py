"""Feature caching: when nothing before the head trains and the data is not augmented, run the
backbone once over a split and train the head on the stored features. The frozen backbone is
in eval mode, so its features are the same every epoch: same result, a fraction of the cost.

With `transfer.feature_cache_dir` the features are also kept on disk, content-addressed (the
backbone's weights, the architecture, the precision and the split's tensors make the key), so
that another command on the same backbone and data (`transfer rank`, then a linear probe)
reads them instead of running the backbone again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from transfer_cli.data.bundle import TensorSplit
from transfer_cli.eval.evaluation import autocast
from transfer_cli.models.base import TransferModel
from transfer_cli.runs.rundir import write_atomic


@torch.inference_mode()
def feature_batches(model: TransferModel, split: Any, batch_size: int, device: torch.device,
                    precision: str = "fp32") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features, labels) of each batch in order, the backbone in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        for x, y in split.batches(batch_size, device):
            with autocast(device, precision):
                yield model.features(x).float(), y
    finally:
        model.train(was_training)


def extract_features(model: TransferModel, split: TensorSplit, batch_size: int, device: torch.device,
                     precision: str = "fp32") -> TensorSplit:
    """The backbone's features of every sample, in order, as an in-memory split on `device`."""
    features, labels = [], []
    for f, y in feature_batches(model, split, batch_size, device, precision):
        features.append(f)
        labels.append(y)
    return TensorSplit(torch.cat(features), torch.cat(labels))


def can_cache(split: object, setting: object) -> tuple[bool, str]:
    """(whether features may be cached for this split, why not)."""
    if setting is False:
        return False, "transfer.cache_features is false"
    if getattr(split, "augmented", False):
        return False, "the training data is augmented (features differ every epoch)"
    return True, ""


# ---- on disk ---------------------------------------------------------------------------------
def feature_key_applies(split: Any) -> bool:
    """Whether a split's features can be kept on disk: data held in memory (data decoded by workers
    is not hashed: that would cost a pass over the files)."""
    return isinstance(split, TensorSplit)


def feature_key(model: TransferModel, architecture: dict, split: Any, precision: str) -> Optional[str]:
    """The sha256 naming a split's features under this backbone: None where the key does not apply
    (see feature_key_applies)."""
    if not feature_key_applies(split):
        return None
    digest = hashlib.sha256(json.dumps({"model": architecture, "precision": precision}, sort_keys=True).encode())
    tensors = sorted(model.backbone.state_dict().items()) + [("x", split.x), ("y", split.y)]
    for name, tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureStore:
    """Features on disk, one safetensors file per key in `directory`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: Optional[str]) -> Optional[TensorSplit]:
        if key is None or not self.path(key).is_file():
            return None
        from safetensors.torch import load_file

        try:
            stored = load_file(str(self.path(key)))
        except Exception:  # noqa: BLE001  a damaged cache entry is only a miss: the backbone runs again
            return None
        return TensorSplit(stored["features"], stored["labels"])

    def put(self, key: Optional[str], split: TensorSplit) -> None:
        if key is None:
            return
        from safetensors.torch import save

        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(key), save({"features": split.x.detach().cpu().contiguous(),
                                           "labels": split.y.detach().cpu().contiguous()}))


def cached_features(model: TransferModel, architecture: dict, split: Any, batch_size: int, device: torch.device,
                    precision: str, store: Optional[FeatureStore]) -> tuple[TensorSplit, bool]:
    """(the split's features, whether they came from the store): read, or extracted and kept."""
    key = feature_key(model, architecture, split, precision) if store is not None else None
    found = store.get(key) if store is not None else None
    if found is not None:
        return TensorSplit(found.x.to(device), found.y.to(device)), True
    features = extract_features(model, split, batch_size, device, precision)
    if store is not None:
        store.put(key, features)
    return features, False
