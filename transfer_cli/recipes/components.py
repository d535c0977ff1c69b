"""Every registry, by config section. Importing this registers the built-in components
(it imports torch, so the CLI calls it only when a command runs)."""

from __future__ import annotations

from transfer_cli.core.registry import Registry


def registries() -> dict[str, Registry]:
    from transfer_cli.data import DATASETS
    from transfer_cli.train.losses import LOSSES
    from transfer_cli.eval.metrics import METRICS
    from transfer_cli.models import MODELS
    from transfer_cli.train.optim import OPTIMIZERS
    from transfer_cli.train.schedules import SCHEDULES

    return {"data": DATASETS, "model": MODELS, "optim": OPTIMIZERS, "schedule": SCHEDULES,
            "loss": LOSSES, "metric": METRICS}
