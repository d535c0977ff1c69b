"""k-shot subsets: k training examples per class, stratified and reproducible by seed."""

from __future__ import annotations

import torch

from transfer_cli.core.errors import DataError


def select_per_class(labels: torch.Tensor, k: int, seed: int, class_names: list[str] | None = None) -> torch.Tensor:
    """Indices of k examples of each class, chosen by `seed`, in ascending order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    short = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < k:
            name = class_names[cls] if class_names else str(cls)
            short.append(f"class {name} has {len(members)}")
            continue
        pick = torch.randperm(len(members), generator=generator)[:k]
        chosen.append(members[pick])
    if short:
        raise DataError(f"data.per_class: {k} examples per class requested, but {'; '.join(short)} in the "
                        f"training data; lower data.per_class")
    return torch.cat(chosen).sort().values
