"""Feature caching: when nothing before the head trains and the data is not augmented, run the
backbone once over a split and train the head on the stored features. The frozen backbone is
in eval mode, so its features are the same every epoch: same result, a fraction of the cost."""

from __future__ import annotations

import torch

from transfer_cli.data.bundle import TensorSplit
from transfer_cli.eval.evaluation import autocast
from transfer_cli.models.base import TransferModel


@torch.inference_mode()
def extract_features(model: TransferModel, split: TensorSplit, batch_size: int, device: torch.device,
                     precision: str = "fp32") -> TensorSplit:
    """The backbone's features of every sample, in order, as an in-memory split on `device`."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for x, y in split.batches(batch_size, device):
        with autocast(device, precision):
            features.append(model.features(x).float())
        labels.append(y)
    model.train(was_training)
    return TensorSplit(torch.cat(features), torch.cat(labels))


def can_cache(split: object, setting: object) -> tuple[bool, str]:
    """(whether features may be cached for this split, why not)."""
    if setting is False:
        return False, "transfer.cache_features is false"
    if getattr(split, "augmented", False):
        return False, "the training data is augmented (features differ every epoch)"
    return True, ""
