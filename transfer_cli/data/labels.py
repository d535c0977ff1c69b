"""Targets: which task the labels describe, the class order, and checks that labels fit it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Literal, Optional

import torch
from pydantic import Field

from transfer_cli.core.errors import DataError
from transfer_cli.core.registry import Params

Task = Literal["auto", "multiclass", "binary", "multilabel", "regression"]


class LabelParams(Params):
    # derived from the training data; evaluating a run reuses the run's values (config.resolve)
    fitted_keys: ClassVar[tuple[str, ...]] = ("classes",)

    task: Task = Field("auto", description="auto: integer labels -> multiclass, 0/1 columns -> multilabel, "
                                           "other numbers -> regression, text labels -> multiclass")
    classes: Optional[list[str]] = Field(
        None, min_length=1, description="class names in label-index order; default: found in the data. The run's "
                                        "config records the order used, and evaluating the run reuses it")


@dataclass
class Targets:
    """Checked label tensors per split and what the model and metrics need to know about them."""

    y: dict[str, torch.Tensor]
    task: str
    num_outputs: int
    class_names: Optional[list[str]]

    @property
    def strata(self) -> Optional[torch.Tensor]:
        """Class per training sample, for stratified splitting (classification only)."""
        return self.y.get("train") if self.task in ("multiclass", "binary") else None


def class_order(found: Iterable[str]) -> list[str]:
    """Label values in a stable order: numerically when they all are numbers ('2' before '10')."""
    values = sorted(set(found))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def encode(labels: list[str], classes: list[str], where: str) -> torch.Tensor:
    """String labels -> class indices; a label outside `classes` is an error naming its row."""
    index = {name: i for i, name in enumerate(classes)}
    out = torch.empty(len(labels), dtype=torch.int64)
    for row, label in enumerate(labels):
        if label not in index:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise DataError(f"{where}: label {label!r} (sample {row}) is not one of the classes ({shown}); "
                            f"the classes come from data.params.classes or the training source")
        out[row] = index[label]
    return out


def infer_task(y: torch.Tensor) -> str:
    if y.dtype.is_floating_point:
        return "regression"
    if y.dim() == 2:
        return "multilabel"
    return "multiclass"


def build_targets(ys: dict[str, torch.Tensor], task: str, classes: Optional[list[str]],
                  where: dict[str, str]) -> Targets:
    """Check the labels of every split against `task` (auto: inferred from the first split's labels,
    the training ones when there are).

    where: split -> the key/file to name in errors.
    """
    task = infer_task(next(iter(ys.values()))) if task == "auto" else task
    checker = {"multiclass": _multiclass, "binary": _binary, "multilabel": _multilabel,
               "regression": _regression}[task]
    return checker(ys, classes, where)


def _as_integers(y: torch.Tensor, where: str) -> torch.Tensor:
    if y.dtype == torch.bool:
        return y.long()
    if y.dtype.is_floating_point:
        bad = ~torch.isfinite(y) | (y != torch.round(y))
        if bad.any():
            row = int(torch.nonzero(bad.reshape(len(y), -1).any(1))[0])
            raise DataError(f"{where}: labels must be integers for a classification task; sample {row} has "
                            f"{y[row].tolist()}; set data.params.task: regression for numeric targets")
        return y.long()
    return y.long()


def _first_outside(y: torch.Tensor, low: int, high: int) -> Optional[int]:
    bad = (y < low) | (y >= high)
    return int(torch.nonzero(bad.reshape(len(y), -1).any(1))[0]) if bad.any() else None


def _multiclass(ys: dict[str, torch.Tensor], classes: Optional[list[str]], where: dict[str, str]) -> Targets:
    out = {}
    for split, y in ys.items():
        if y.dim() != 1:
            raise DataError(f"{where[split]}: multiclass labels must have shape (N,), got {tuple(y.shape)}; "
                            f"for one 0/1 column per class set data.params.task: multilabel")
        out[split] = _as_integers(y, where[split])
    if classes is not None and len(classes) < 2:
        raise DataError(f"data.params.classes: a classification task needs at least 2 classes; got {len(classes)} "
                        f"({', '.join(repr(c) for c in classes)})")
    found = max(int(y.max()) + 1 if len(y) else 0 for y in out.values())
    count = len(classes) if classes else found
    for split, y in out.items():
        row = _first_outside(y, 0, max(count, 1))
        if row is not None:
            raise DataError(f"{where[split]}: label {int(y[row])} (sample {row}) is out of range: labels are "
                            f"class indices {_index_range(classes)}")
    if count < 2:
        labels = "there are no labels" if count == 0 else "every label is 0"
        raise DataError(f"{next(iter(where.values()))}: a classification task needs at least 2 classes; {labels}")
    names = classes or [str(i) for i in range(count)]
    return Targets(out, "multiclass", count, names)


def _index_range(classes: Optional[list[str]]) -> str:
    """The class indices a label may take (without data.params.classes the labels define the count)."""
    if classes:
        return f"0..{len(classes) - 1} (the {len(classes)} classes in data.params.classes)"
    return ("counted from 0 (0..K-1 for K classes), so never negative; shift the labels to start at 0, or set "
            "data.params.task: regression for numeric targets")


def _zero_one(ys: dict[str, torch.Tensor], where: dict[str, str], task: str) -> dict[str, torch.Tensor]:
    out = {}
    for split, y in ys.items():
        y = _as_integers(y, where[split])
        row = _first_outside(y, 0, 2)
        if row is not None:
            what = "binary labels" if task == "binary" else "multi-label targets (one 0/1 column per class)"
            raise DataError(f"{where[split]}: {what} must be 0 or 1; sample {row} has {y[row].tolist()}")
        out[split] = y
    return out


def _binary(ys: dict[str, torch.Tensor], classes: Optional[list[str]], where: dict[str, str]) -> Targets:
    if classes is not None and len(classes) != 2:
        raise DataError(f"data.params.classes: a binary task has 2 classes (negative, positive); got {len(classes)}")
    for split, y in ys.items():
        if y.dim() != 1:
            raise DataError(f"{where[split]}: binary labels must have shape (N,), got {tuple(y.shape)}")
    return Targets(_zero_one(ys, where, "binary"), "binary", 1, classes or ["0", "1"])


def _multilabel(ys: dict[str, torch.Tensor], classes: Optional[list[str]], where: dict[str, str]) -> Targets:
    first = next(iter(ys.values()))
    width = first.shape[1] if first.dim() == 2 else None
    for split, y in ys.items():
        if y.dim() != 2 or y.shape[1] != width:
            raise DataError(f"{where[split]}: multi-label targets must have shape (N, K) with the same K in every "
                            f"split, got {tuple(y.shape)}")
    if classes is not None and len(classes) != width:
        raise DataError(f"data.params.classes: {len(classes)} names for {width} label columns")
    return Targets(_zero_one(ys, where, "multilabel"), "multilabel", width, classes or [str(i) for i in range(width)])


def _regression(ys: dict[str, torch.Tensor], classes: Optional[list[str]], where: dict[str, str]) -> Targets:
    if classes is not None:
        raise DataError("data.params.classes: a regression task has no classes; remove it or set data.params.task")
    out = {}
    for split, y in ys.items():
        y = y.float()
        if y.dim() not in (1, 2) or not torch.isfinite(y).all():
            raise DataError(f"{where[split]}: regression targets must be finite numbers of shape (N,) or (N, K), "
                            f"got shape {tuple(y.shape)}" + ("" if torch.isfinite(y).all() else " with NaN/Inf"))
        out[split] = y
    first = next(iter(out.values()))
    width = 1 if first.dim() == 1 else first.shape[1]
    return Targets(out, "regression", width, None)
