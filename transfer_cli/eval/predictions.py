"""`transfer evaluate --predictions FILE`: one CSV row per sample of the evaluated split.

Columns: `index` (position in the split), `true`, `predicted` (class names where the data has
them), then one probability column per class headed by the class name (binary: both
classes; multilabel: one per label, `true`/`predicted` list the positive labels joined by
';'). Regression: `index`, `true`, `predicted` (multi-output: `true_0`, `predicted_0`, ...).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import torch

from transfer_cli.core.errors import UsageError
from transfer_cli.runs.rundir import write_atomic

FIXED = ("index", "true", "predicted")


def check_target(path: Path, overwrite: bool) -> Path:
    """Refuse an unusable file before any work is done; an existing one only with --overwrite."""
    if path.is_dir():
        raise UsageError(f"--predictions: {path} is a directory; give a file name such as preds.csv")
    if path.exists() and not overwrite:
        raise UsageError(f"--predictions: {path} already exists; use --overwrite to replace it, or another file name")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise UsageError(f"--predictions: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--predictions: cannot write into {folder}")
    return path.absolute()


def probability_headers(names: Sequence[str]) -> list[str]:
    """The class names, except where one would repeat a fixed column name."""
    return [f"p({name})" if name in FIXED else name for name in names]


def prediction_table(task: str, preds: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                     threshold: float) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for the CSV; probabilities with 6 significant digits."""
    if task == "multiclass":
        predicted = preds.argmax(dim=1).tolist()
        rows = [[str(i), names[t], names[p], *(f"{v:.6g}" for v in probs)]
                for i, (t, p, probs) in enumerate(zip(targets.long().tolist(), predicted, preds.tolist()))]
        return [*FIXED, *probability_headers(names)], rows
    if task == "binary":
        rows = [[str(i), names[int(t)], names[int(p > threshold)], f"{1 - p:.6g}", f"{p:.6g}"]
                for i, (t, p) in enumerate(zip(targets.tolist(), preds.reshape(-1).tolist()))]
        return [*FIXED, *probability_headers(names)], rows
    if task == "multilabel":
        def joined(flags: list) -> str:
            return ";".join(name for name, flag in zip(names, flags) if flag)

        rows = [[str(i), joined([v > 0.5 for v in t]), joined([v > threshold for v in p]), *(f"{v:.6g}" for v in p)]
                for i, (t, p) in enumerate(zip(targets.tolist(), preds.tolist()))]
        return [*FIXED, *probability_headers(names)], rows
    if preds.dim() == 1:
        return list(FIXED), [[str(i), f"{t:.6g}", f"{p:.6g}"] for i, (t, p) in
                             enumerate(zip(targets.reshape(-1).tolist(), preds.tolist()))]
    outputs = preds.shape[1]
    header = ["index", *(f"true_{j}" for j in range(outputs)), *(f"predicted_{j}" for j in range(outputs))]
    rows = [[str(i), *(f"{v:.6g}" for v in t), *(f"{v:.6g}" for v in p)]
            for i, (t, p) in enumerate(zip(targets.tolist(), preds.tolist()))]
    return header, rows


def write_predictions(path: Path, task: str, preds: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                      threshold: float) -> None:
    header, rows = prediction_table(task, preds, targets, names, threshold)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
