"""Data sources. Importing this package registers the built-in ones in DATASETS."""

from transfer_cli.data import builtin, image_folder, tabular, tensors, text  # noqa: F401  (registration)
from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.data.registry import DATASETS

__all__ = ["DATASETS", "DataBundle", "TensorSplit"]
