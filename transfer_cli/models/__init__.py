"""Architectures. Importing this package registers the built-in ones in MODELS."""

from transfer_cli.models import cnn1d, hf_encoder, mlp, resnet  # noqa: F401  (registration)
from transfer_cli.models.base import TransferModel
from transfer_cli.models.registry import MODELS

__all__ = ["MODELS", "TransferModel"]
