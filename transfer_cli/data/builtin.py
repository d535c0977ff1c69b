"""Built-in data sets, generated on the fly (no download): the motif world's source and target
tasks as 1-D signals (`motifs`) or 2-D images (`motifs2d`)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from transfer_cli.core.errors import ConfigError
from transfer_cli.core.registry import Params
from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.data.registry import DATASETS


class MotifParams(Params):
    task: Literal["source", "target"] = "source"
    n_train: int = Field(4000, ge=1, description="training samples (balanced over classes)")
    n_val: int = Field(1000, ge=1)
    n_test: int = Field(2000, ge=1)
    noise: float = Field(0.15, ge=0, description="std of the background noise")
    length: Optional[int] = Field(None, ge=8, description="L for signals, H=W for images (default 160 / 16)")
    channels: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, description="which samples are drawn (the experiment seed does not change the data)")
    world_seed: int = Field(0, ge=0, description="which motifs exist; source and target must share it")


def _motif_bundle(params: MotifParams, dims: int) -> DataBundle:
    from transfer_cli.data.synthetic import make_motif_task

    try:
        splits, class_names = make_motif_task(
            params.task, dims=dims, n_train=params.n_train, n_val=params.n_val, n_test=params.n_test,
            seed=params.seed, world_seed=params.world_seed, noise=params.noise, length=params.length,
            channels=params.channels,
        )
    except ValueError as exc:
        raise ConfigError([f"data.params: {exc}"]) from None
    return DataBundle(
        splits={name: TensorSplit(x, y) for name, (x, y) in splits.items()},
        task="multiclass", num_outputs=len(class_names), class_names=class_names,
        info={"source": f"built-in motif world {params.world_seed}, {params.task} task, sample seed {params.seed}"},
    )


@DATASETS.register("motifs", params=MotifParams)
def motifs(params: MotifParams, *, seed: int) -> DataBundle:
    """Built-in signals (C, L): which motif is present (source) / which pair of motifs (target)."""
    return _motif_bundle(params, dims=1)


@DATASETS.register("motifs2d", params=MotifParams)
def motifs2d(params: MotifParams, *, seed: int) -> DataBundle:
    """Built-in images (C, H, W) from the same idea as `motifs`, for image models."""
    return _motif_bundle(params, dims=2)
