"""Where each split comes from: its own file (`train`, `val`, `test`) or carved out of one
source (`path`) by seeded, stratified fractions. Shared by every file-based data source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import torch
from pydantic import AfterValidator, Field, model_validator

from transfer_cli.core.errors import DataError
from transfer_cli.core.registry import Params
from transfer_cli.data.bundle import Split

SPLITS = ("train", "val", "test")
DEFAULT_FRACTION = 0.1


def absolute_path(value: str) -> str:
    """Relative to the working directory, as in a shell; stored absolute in the run's config so
    that `transfer evaluate RUN_DIR` finds the data from anywhere."""
    return str(Path(value).expanduser().absolute())


DataPath = Annotated[str, AfterValidator(absolute_path)]


class SplitParams(Params):
    """Either one source split by fractions (`path`) or one source per split (`train`, `val`, `test`;
    an evaluation may give only `val` and/or `test`)."""

    path: Optional[DataPath] = Field(None, description="one source, split into train/val/test by the fractions")
    train: Optional[DataPath] = Field(None, description="the training source (with optional val/test sources)")
    val: Optional[DataPath] = None
    test: Optional[DataPath] = None
    val_fraction: Optional[float] = Field(
        None, ge=0, lt=1, description="share carved out of the training source for val; default 0.1 with path, "
                                      "else 0 (no val split unless a val source is given)")
    test_fraction: Optional[float] = Field(None, ge=0, lt=1, description="as val_fraction, for test")
    split_seed: int = Field(0, ge=0, description="which samples are carved out (independent of the experiment seed)")

    @model_validator(mode="after")
    def _one_layout(self) -> "SplitParams":
        if self.path is not None and self.train is not None:
            raise ValueError("give either `path` (one source, split by val_fraction/test_fraction) or `train` "
                             "(with optional `val` and `test` sources), not both")
        if not (self.path or self.train or self.val or self.test):
            raise ValueError("no data source: give `path` (one source, split by val_fraction/test_fraction) or "
                             "`train` (with optional `val` and `test` sources)")
        if not (self.path or self.train) and (self.val_fraction or self.test_fraction):
            raise ValueError("val_fraction/test_fraction carve samples out of the training source: give `path` "
                             "or `train`")
        if self.path is not None and (self.val or self.test):
            raise ValueError("`val`/`test` sources go with `train`, not with `path`; use train: ... instead of path")
        for name in ("val", "test"):
            if getattr(self, name) and getattr(self, f"{name}_fraction"):
                raise ValueError(f"`{name}` is given both as a source and as {name}_fraction; keep one")
        if sum(self.fractions().values()) >= 1:
            raise ValueError("val_fraction + test_fraction must leave samples for training (sum < 1)")
        return self

    def sources(self) -> dict[str, str]:
        """The split -> path of every split that has its own source."""
        found = {"train": self.path or self.train, "val": self.val, "test": self.test}
        return {name: path for name, path in found.items() if path}

    def fractions(self) -> dict[str, float]:
        """The split -> share of the training source carved out for it (only splits without a source)."""
        default = DEFAULT_FRACTION if self.path is not None else 0.0
        out = {}
        for name in ("val", "test"):
            value = getattr(self, f"{name}_fraction")
            value = default if value is None and not getattr(self, name) else (value or 0.0)
            if value > 0:
                out[name] = value
        return out

    def reference(self) -> str:
        """The split whose source defines the columns, classes and task: train, else the first given."""
        return next(iter(self.sources()))

    def key_of(self, split: str) -> str:
        """The params key naming a split's source, for error messages."""
        return "data.params.path" if split == "train" and self.path else f"data.params.{split}"


def require(path: str, key: str, kind: str = "file") -> Path:
    """The path, or a DataError saying which key names a missing file/folder."""
    found = Path(path)
    ok = found.is_file() if kind == "file" else found.is_dir()
    if not ok and found.exists():  # a folder given for a file, or the reverse
        raise DataError(f"{key}: {found} is a {'folder' if found.is_dir() else 'file'}, but a {kind} is expected "
                        f"here; give the {kind}")
    if not ok:
        raise DataError(f"{key}: {kind} not found: {found} (relative paths are resolved against the working "
                        f"directory)")
    return found


def carve(n: int, fractions: dict[str, float], seed: int, strata: Optional[torch.Tensor] = None,
          where: str = "data") -> dict[str, torch.Tensor]:
    """Indices (ascending) of 'train' and of each carved split, a pure function of the arguments.

    With `strata` (a class id per sample) every class is shared out in proportion: within each
    class the samples are shuffled and ranked, and samples are taken by rank quantile, so the
    totals are exact and small classes still reach every split when they can.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if strata is not None:
        shuffled = strata[order]
        quantile = torch.empty(n, dtype=torch.float64)
        for cls in torch.unique(shuffled):
            members = torch.nonzero(shuffled == cls).flatten()
            quantile[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
        order = order[torch.sort(quantile, stable=True).indices]
    out, begin = {}, 0
    for name in ("test", "val"):
        if name not in fractions:
            continue
        count = round(n * fractions[name])
        if count == 0:
            raise DataError(f"{where}: {name}_fraction {fractions[name]} of {n} samples is no sample; raise it or "
                            f"give a {name} source")
        out[name] = order[begin:begin + count].sort().values
        begin += count
    out["train"] = order[begin:].sort().values
    if len(out["train"]) == 0:
        raise DataError(f"{where}: no sample is left for training after carving val/test out of {n}")
    return out


def carve_splits(given: dict[str, Split], params: SplitParams, strata: Optional[torch.Tensor],
                 where: str) -> dict[str, Split]:
    """The splits with their own source, plus those carved out of the training source; in
    train, val, test order."""
    splits = dict(given)
    fractions = params.fractions()
    if fractions:
        train = splits["train"]
        index = carve(len(train), fractions, params.split_seed, strata, where)
        splits.update({name: train.subset(i) for name, i in index.items()})
    return {name: splits[name] for name in SPLITS if name in splits}


def split_info(params: SplitParams, sizes: dict[str, int], stratified: bool) -> dict[str, Any]:
    """How the splits were made (sources, or fraction, seed and stratification), for run.json and reports."""
    carved, sources = params.fractions(), params.sources()
    made = {}
    for name, size in sizes.items():
        if name in carved:
            made[name] = {"carved_from": sources["train"], "fraction": carved[name], "seed": params.split_seed,
                          "stratified": stratified, "size": size}
        else:
            made[name] = {"source": sources[name], "size": size}
    if carved:
        made["train"]["carved_out"] = sorted(carved)
    return {"splits": made}
