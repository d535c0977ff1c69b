"""Per-sample decisions on the eval split, kept in the run directory (`outcomes/<split>.safetensors`)
so that two runs evaluated on the same samples can be compared pair by pair (significance.py).

A decision is what the metrics score: the predicted class (multiclass, binary at the threshold),
whether every label is right (multilabel), or the predicted values (regression), with the targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from transfer_cli.dist import distributed
from transfer_cli.eval import significance as sig
from transfer_cli.eval.evaluation import SplitResult
from transfer_cli.runs.rundir import RunDir

FOLDER = "outcomes"


def decisions(task: str, result: SplitResult, threshold: float) -> Optional[dict[str, torch.Tensor]]:
    """The split's decisions and targets (all ranks' parts, in split order), or None when the
    evaluation kept no predictions."""
    parts = distributed.gathered((result.predictions, result.targets))
    if any(p is None for p, _ in parts):
        return None
    preds, targets = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
    if task == "multiclass":
        return {"pred": preds.argmax(1).int(), "target": targets.int()}
    if task == "binary":
        return {"pred": (preds.reshape(-1) > threshold).int(), "target": targets.reshape(-1).int()}
    if task == "multilabel":
        exact = ((preds > threshold) == (targets > 0.5)).all(1)
        return {"pred": exact.int(), "target": torch.ones_like(exact, dtype=torch.int32)}
    return {"pred": preds.float(), "target": targets.float()}


def save(run: RunDir, split: str, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save as to_bytes

    if run.writable:
        (run.path / FOLDER).mkdir(exist_ok=True)
        run.write_bytes(f"{FOLDER}/{split}.safetensors", to_bytes({k: v.contiguous() for k, v in tensors.items()}))


def load(run_dir: str | Path, split: str) -> Optional[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(run_dir) / FOLDER / f"{split}.safetensors"
    try:
        return load_file(str(path)) if path.is_file() else None
    except Exception:  # noqa: BLE001  damaged: the gain is reported without its paired statistics
        return None


def compare(task: str, metric: str, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor],
            num_classes: int, seed: int) -> Optional[dict]:
    """The paired statistics of the finetuned (`ours`) against the baseline (`theirs`); None when
    they were not evaluated on the same samples."""
    if len(ours["target"]) != len(theirs["target"]) or not torch.equal(ours["target"], theirs["target"]):
        return None
    if task == "regression":
        return sig.compare_regression(metric, ours["pred"], theirs["pred"], ours["target"], seed=seed)
    if task == "multilabel":  # decisions are exact matches: accuracy over them is subset accuracy
        stats = sig.compare_classification("accuracy", ours["pred"], theirs["pred"], ours["target"], 2, seed=seed)
        return {**stats, "metric": "subset_accuracy"}
    classes = 2 if task == "binary" else num_classes
    return sig.compare_classification(metric, ours["pred"], theirs["pred"], ours["target"], classes, seed=seed)
