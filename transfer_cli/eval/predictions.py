"""One row per sample: `transfer evaluate --predictions FILE` (with the true labels) and
`transfer predict` (without them) share the columns of the model's decisions.

Evaluate's columns: `index` (position in the split), `true`, `predicted` (class names where the
data has them), then one probability column per class headed by the class name (binary: both
classes; multilabel: one per label, `true`/`predicted` list the positive labels joined by
';'). Regression: `index`, `true`, `predicted` (multi-output: `true_0`, `predicted_0`, ...).
Predict's columns: `index`, the input's file name or id where it has one, then the same decisions.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from transfer_cli.core.errors import UsageError
from transfer_cli.runs.rundir import write_atomic

FIXED = ("index", "true", "predicted")
Columns = tuple[list[str], list[list[str]]]  # (header, rows)


def check_target(path: Path, overwrite: bool, option: str = "--predictions") -> Path:
    """Refuse an unusable file before any work is done; an existing one only with --overwrite."""
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a directory; give a file name such as preds.csv")
    if path.exists() and not overwrite:
        raise UsageError(f"{option}: {path} already exists; use --overwrite to replace it, or another file name")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise UsageError(f"{option}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option}: cannot write into {folder}")
    return path.absolute()


def probability_headers(names: Sequence[str], fixed: Sequence[str] = FIXED) -> list[str]:
    """The class names, except where one would repeat a fixed column name."""
    return [f"p({name})" if name in fixed else name for name in names]


def _positives(names: Sequence[str], flags: list) -> str:
    return ";".join(name for name, flag in zip(names, flags) if flag)


def decision_columns(task: str, preds: torch.Tensor, names: Sequence[str], threshold: float,
                     fixed: Sequence[str] = FIXED) -> Columns:
    """The `predicted` column(s) and, for classes, one probability column per class (6 significant digits)."""
    if task == "multiclass":
        rows = [[names[p], *(f"{v:.6g}" for v in probs)] for p, probs in zip(preds.argmax(dim=1).tolist(),
                                                                            preds.tolist())]
        return ["predicted", *probability_headers(names, fixed)], rows
    if task == "binary":
        rows = [[names[int(p > threshold)], f"{1 - p:.6g}", f"{p:.6g}"] for p in preds.reshape(-1).tolist()]
        return ["predicted", *probability_headers(names, fixed)], rows
    if task == "multilabel":
        rows = [[_positives(names, [v > threshold for v in p]), *(f"{v:.6g}" for v in p)] for p in preds.tolist()]
        return ["predicted", *probability_headers(names, fixed)], rows
    if preds.dim() == 1:
        return ["predicted"], [[f"{p:.6g}"] for p in preds.tolist()]
    return [f"predicted_{j}" for j in range(preds.shape[1])], [[f"{v:.6g}" for v in p] for p in preds.tolist()]


def truth_columns(task: str, targets: torch.Tensor, names: Sequence[str]) -> Columns:
    """The `true` column(s) of evaluate's table."""
    if task == "multiclass":
        return ["true"], [[names[t]] for t in targets.long().tolist()]
    if task == "binary":
        return ["true"], [[names[int(t)]] for t in targets.tolist()]
    if task == "multilabel":
        return ["true"], [[_positives(names, [v > 0.5 for v in t])] for t in targets.tolist()]
    if targets.dim() == 1 or targets.shape[1] == 1:
        return ["true"], [[f"{t:.6g}"] for t in targets.reshape(-1).tolist()]
    return [f"true_{j}" for j in range(targets.shape[1])], [[f"{v:.6g}" for v in t] for t in targets.tolist()]


def prediction_table(task: str, preds: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                     threshold: float) -> Columns:
    """Evaluate's (header, rows): index, the true label(s), the decisions."""
    if task == "regression" and preds.dim() == 1:
        targets = targets.reshape(-1)
    true_header, true_rows = truth_columns(task, targets, names)
    header, rows = decision_columns(task, preds, names, threshold)
    return ["index", *true_header, *header], [[str(i), *t, *d] for i, (t, d) in enumerate(zip(true_rows, rows))]


def input_table(task: str, preds: torch.Tensor, names: Sequence[str], threshold: float,
                label: Optional[tuple[str, list[str]]] = None) -> Columns:
    """Predict's (header, rows): index, the inputs' file name or id (`label`: header, values), the decisions."""
    fixed = ("index", "predicted", *([label[0]] if label else []))
    header, rows = decision_columns(task, preds, names, threshold, fixed)
    first = ["index", *([label[0]] if label else [])]
    ids = label[1] if label else [None] * len(rows)
    return [*first, *header], [[str(i), *([ident] if label else []), *row]
                               for i, (ident, row) in enumerate(zip(ids, rows))]


def input_records(task: str, preds: torch.Tensor, names: Sequence[str], threshold: float,
                  label: Optional[tuple[str, list[str]]] = None) -> list[dict]:
    """Predict's JSON lines: the same decisions with full-precision probabilities."""
    records = []
    top = preds.argmax(dim=1).tolist() if task == "multiclass" else []
    for i, p in enumerate(preds.tolist()):
        record: dict = {"index": i, **({label[0]: label[1][i]} if label else {})}
        if task == "multiclass":
            record.update(predicted=names[top[i]], probabilities=dict(zip(names, p)))
        elif task == "binary":
            record.update(predicted=names[int(p > threshold)], probabilities={names[0]: 1 - p, names[1]: p})
        elif task == "multilabel":
            record.update(predicted=[n for n, v in zip(names, p) if v > threshold], probabilities=dict(zip(names, p)))
        else:
            record["predicted"] = p
        records.append(record)
    return records


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_predictions(path: Path, task: str, preds: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                      threshold: float) -> None:
    write_atomic(path, csv_text(*prediction_table(task, preds, targets, names, threshold)))
