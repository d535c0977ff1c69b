"""The `csv` data source: numeric feature columns and a label column, read with the csv module.

Also the CSV reading and label mapping that `text_csv` shares.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from pydantic import Field

from transfer_cli.core.errors import DataError
from transfer_cli.core.registry import did_you_mean
from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.data.labels import LabelParams, Targets, build_targets, class_order, encode
from transfer_cli.data.registry import DATASETS
from transfer_cli.data.splitting import SplitParams, carve_splits, require, split_info


class TableParams(SplitParams, LabelParams):
    label: str = Field(..., description="the label column")
    delimiter: str = Field(",", min_length=1, max_length=1)


class CsvParams(TableParams):
    fitted_keys: ClassVar[tuple[str, ...]] = ("features", "classes", "mean", "std")

    features: Optional[list[str]] = Field(
        None, min_length=1, description="feature columns; default: every numeric column but the label. The run's "
                                        "config records the columns used")
    standardize: bool = Field(True, description="scale each feature to zero mean, unit variance on the training split")
    mean: Optional[list[float]] = Field(None, description="per-feature means; default: computed on the training split")
    std: Optional[list[float]] = Field(None, description="per-feature standard deviations; as mean")


@dataclass
class Table:
    where: str
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str, option: str) -> list[str]:
        if name not in self.header:
            raise DataError(f"{self.where}: no column '{name}'{did_you_mean(name, self.header)}; it has: "
                            f"{', '.join(self.header)} (set data.params.{option})")
        i = self.header.index(name)
        return [row[i] for row in self.rows]


def read_table(path: str, key: str, delimiter: str) -> Table:
    """A CSV file with a header row; every row must have as many fields as the header."""
    file = require(path, key)
    where = f"{key} ({path})"
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where}: cannot read it as UTF-8 CSV ({exc})") from None
    if len(lines) < 2:
        raise DataError(f"{where}: expected a header row and at least one data row, found {len(lines)} rows")
    header = [name.strip() for name in lines[0]]
    rows = [row for row in lines[1:] if row]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{where}: line {number} has {len(row)} fields, the header has {len(header)} "
                            f"(delimiter {delimiter!r}: set data.params.delimiter if it is another)")
    return Table(where, header, rows)


def table_targets(tables: dict[str, Table], params: TableParams) -> Targets:
    """The label column of every split as checked targets; class labels are mapped to indices in
    the order of data.params.classes (default: the labels of the training source, sorted)."""
    labels = {split: [v.strip() for v in table.column(params.label, "label")] for split, table in tables.items()}
    where = {split: table.where for split, table in tables.items()}
    task = params.task
    if task == "auto":
        task = "regression" if _has_fractions(labels[params.reference()]) else "multiclass"
    if task == "regression":
        return build_targets({s: _numbers(v, f"{where[s]}: column '{params.label}'") for s, v in labels.items()},
                             task, params.classes, where)
    classes = params.classes or class_order(labels[params.reference()])
    ys = {split: encode(values, classes, f"{where[split]}: column '{params.label}'")
          for split, values in labels.items()}
    return build_targets(ys, task, classes, where)


def _has_fractions(values: list[str]) -> bool:
    try:
        return any(not float(v).is_integer() for v in values)
    except ValueError:
        return False


def _numbers(values: list[str], where: str) -> torch.Tensor:
    out = torch.empty(len(values), dtype=torch.float32)
    for row, value in enumerate(values):
        try:
            out[row] = float(value)
        except ValueError:
            raise DataError(f"{where}: row {row + 2} has {value!r}, not a number") from None
    return out


def numeric_columns(table: Table, exclude: str) -> list[str]:
    """Columns whose every non-empty cell is a number."""
    found = []
    for i, name in enumerate(table.header):
        if name == exclude:
            continue
        try:
            [float(row[i]) for row in table.rows if row[i].strip()]
        except ValueError:
            continue
        found.append(name)
    return found


TRAINING_FIX = "fill it in or leave the column out of data.params.features"
INPUTS_FIX = "fill it in (the model was trained on this feature: every input row needs it)"


def feature_matrix(table: Table, columns: list[str], fix: str = TRAINING_FIX) -> torch.Tensor:
    """The feature columns as floats; a cell that is not a number names its line and `fix`."""
    out = torch.empty(len(table.rows), len(columns), dtype=torch.float32)
    for j, name in enumerate(columns):
        cells = table.column(name, "features")
        for row, cell in enumerate(cells):
            try:
                out[row, j] = float(cell)
            except ValueError:
                problem = "is empty" if not cell.strip() else f"has {cell!r}, not a number"
                raise DataError(f"{table.where}: line {row + 2}, column '{name}' {problem}; {fix}") from None
    if not torch.isfinite(out).all():
        row, col = (int(i) for i in torch.nonzero(~torch.isfinite(out))[0])
        raise DataError(f"{table.where}: line {row + 2}, column '{columns[col]}' is NaN or Inf")
    return out


@DATASETS.register("csv", params=CsvParams)
def csv_table(params: CsvParams, *, seed: int) -> DataBundle:
    """Tabular data: numeric feature columns and a label column (string labels mapped to classes)."""
    tables = {split: read_table(path, params.key_of(split), params.delimiter)
              for split, path in params.sources().items()}
    reference = tables[params.reference()]
    columns = params.features or numeric_columns(reference, exclude=params.label)
    if params.label in columns:
        raise DataError(f"data.params.features: the label column '{params.label}' cannot also be a feature")
    if not columns:
        raise DataError(f"{reference.where}: no numeric column besides the label '{params.label}'; "
                        f"name the feature columns in data.params.features")
    targets = table_targets(tables, params)
    given = {split: TensorSplit(feature_matrix(table, columns), targets.y[split]) for split, table in tables.items()}
    splits = carve_splits(given, params, targets.strata, reference.where)
    fitted = {"features": columns, **({"classes": targets.class_names} if targets.class_names else {})}
    if params.standardize:
        mean, std = _standardize(splits, params, len(columns))
        fitted.update(mean=mean, std=std)
    ignored = [c for c in reference.header if c not in columns and c != params.label]
    return DataBundle(
        splits=splits, task=targets.task, num_outputs=targets.num_outputs, class_names=targets.class_names,
        info={"source": f"csv {', '.join(params.sources().values())}", "features": columns, "ignored_columns": ignored,
              **split_info(params, {name: len(s) for name, s in splits.items()}, targets.strata is not None)},
        fitted=fitted,
    )


def _standardize(splits: dict[str, TensorSplit], params: CsvParams, width: int) -> tuple[list[float], list[float]]:
    """Scale features in place with the given statistics, or those of the training split (the
    first split when there is none)."""
    train = splits.get("train", next(iter(splits.values()))).x
    mean = params.mean if params.mean is not None else train.mean(0).tolist()
    std = params.std if params.std is not None else train.std(0, unbiased=False).tolist()
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != width:
            raise DataError(f"data.params.{name}: {len(values)} values for {width} features")
    std = [s if s > 0 else 1.0 for s in std]
    for split in splits.values():
        split.x = scaled(split.x, mean, std)
    return mean, std


def scaled(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Features standardized with the given statistics (a zero std counts as 1)."""
    return (x - torch.tensor(mean)) / torch.tensor([s if s > 0 else 1.0 for s in std])


def require_columns(table: Table, columns: list[str], what: str) -> None:
    """Every column the run was trained on must be in an unlabelled table; name the missing ones."""
    missing = [name for name in columns if name not in table.header]
    if missing:
        hints = "".join(did_you_mean(name, table.header) for name in missing[:1])
        raise DataError(f"{table.where}: missing {what} column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)}{hints}, which the model was trained on; "
                        f"the file has: {', '.join(table.header)}{_delimiter_hint(table, columns)}")


def _delimiter_hint(table: Table, columns: list[str]) -> str:
    """One header cell holding the wanted names between another separator: the file is split by
    another delimiter than the run's."""
    if len(table.header) != 1:
        return ""
    for sep in (";", "\t", "|", ","):
        if len(columns) > 1 and all(name in table.header[0].split(sep) for name in columns):
            return f" (it looks separated by {sep!r}, not by the run's data.params.delimiter: convert the file)"
    return ""


def csv_inputs(params: CsvParams, path: str, key: str) -> tuple[Table, torch.Tensor]:
    """An unlabelled table read as in training: the run's feature columns and standardization
    (a label column, if present, is ignored)."""
    table = read_table(path, key, params.delimiter)
    if params.features is None or (params.standardize and (params.mean is None or params.std is None)):
        raise DataError("data.params: the run's config records no features/mean/std (a config that was never "
                        "trained); give the run directory, or a config of the run that made the weights")
    require_columns(table, params.features, "feature")
    x = feature_matrix(table, params.features, INPUTS_FIX)  # predict: the features are the run's, not optional
    return table, scaled(x, params.mean, params.std) if params.standardize else x
