"""Unlabelled inputs for `transfer predict`, read by the data source the run was trained on with the
preprocessing its config records (feature columns and standardization, image size and mean/std,
tokenizer): each source's own reading code, so prediction cannot drift from training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from transfer_cli.core.errors import DataError, UsageError
from transfer_cli.data.bundle import Split, TensorSplit
from transfer_cli.data.image_folder import folder_inputs
from transfer_cli.data.registry import DATASETS
from transfer_cli.data.tabular import Table, csv_inputs
from transfer_cli.data.tensors import array_inputs
from transfer_cli.data.text import text_inputs

KEY = "INPUTS"


@dataclass
class Inputs:
    """The samples to predict, in order, and what names each of them in the output (a file name
    or an id column), if anything."""

    split: Split
    label: Optional[tuple[str, list[str]]] = None  # (column header, one value per sample)


def _unlabelled(x: torch.Tensor) -> TensorSplit:
    return TensorSplit(x, torch.zeros(len(x), dtype=torch.int64))  # the targets are never read


def _ids(table: Table, column: Optional[str]) -> Optional[tuple[str, list[str]]]:
    if column is None:
        return None
    if column not in table.header:
        raise UsageError(f"--id-column: {table.where} has no column '{column}'; it has: {', '.join(table.header)}")
    return "id", table.column(column, "id")


def _table(read: Callable[[Any, str, str], tuple[Table, torch.Tensor]]) -> Callable[..., Inputs]:
    def reader(params: Any, path: str, id_column: Optional[str]) -> Inputs:
        table, x = read(params, path, KEY)
        return Inputs(_unlabelled(x), _ids(table, id_column))
    return reader


def _images(params: Any, path: str, id_column: Optional[str]) -> Inputs:
    names, split = folder_inputs(params, path, KEY)
    return Inputs(split, ("file", names))


def _arrays(params: Any, path: str, id_column: Optional[str]) -> Inputs:
    x_key, add_channel = getattr(params, "x_key", "x"), getattr(params, "add_channel", False)
    return Inputs(_unlabelled(array_inputs(path, KEY, x_key, add_channel)))


READERS: dict[str, Callable[..., Inputs]] = {
    "csv": _table(csv_inputs), "text_csv": _table(text_inputs), "image_folder": _images,
    "tensors": _arrays, "motifs": _arrays, "motifs2d": _arrays,  # the built-in data: an .npz/.pt of x
}
TABLES = ("csv", "text_csv")


def read_inputs(data_name: str, params: dict, path: str, id_column: Optional[str] = None) -> Inputs:
    """`path` read as data `data_name` with the run's `params` (data.params of its config)."""
    if data_name not in READERS:
        raise DataError(f"data.name: predict reads inputs for runs trained on {', '.join(READERS)}; this run's "
                        f"data is '{data_name}'")
    if id_column is not None and data_name not in TABLES:
        raise UsageError(f"--id-column names a CSV column; the run's data is '{data_name}' (its inputs are "
                         f"{'named by file' if data_name == 'image_folder' else 'numbered'})")
    entry = DATASETS.get(data_name)
    inputs = READERS[data_name](entry.params.model_validate(params), path, id_column)
    if len(inputs.split) == 0:
        raise DataError(f"{KEY} ({path}): no sample to predict")
    return inputs
