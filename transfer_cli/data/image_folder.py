"""The `image_folder` data source: one sub-folder per class of PNG/JPEG files, decoded by
DataLoader workers (see `loader.DatasetSplit`) with resize, crop, flip and normalization."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union

import torch
from pydantic import Field, field_validator

from transfer_cli.core.errors import DataError
from transfer_cli.data.bundle import DataBundle
from transfer_cli.data.imaging import ImageTransform
from transfer_cli.data.labels import class_order
from transfer_cli.data.loader import DatasetSplit, ReadFailure
from transfer_cli.data.registry import DATASETS
from transfer_cli.data.splitting import SplitParams, carve_splits, require, split_info

class ImageFolderParams(SplitParams):
    # derived from the training data; evaluating a run reuses the run's values (config.resolve)
    fitted_keys: ClassVar[tuple[str, ...]] = ("classes", "size", "resize", "resample", "rescale", "mean", "std")

    size: Optional[Union[int, list[int]]] = Field(None, description="(H, W) fed to the model, or one number for "
                                                        "square images; default: the images' own size when they "
                                                        "all share one (never upsampled)")
    resize: Optional[Union[Annotated[int, Field(gt=0)], list[Annotated[int, Field(gt=0)]]]] = Field(
        None, description="shorter side before cropping, or an exact [height, width] (aspect ratio not kept); "
                          "default: just enough to cover size")
    resample: Optional[Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]] = Field(
        None, description="the resize filter; default bilinear")
    rescale: Optional[float] = Field(None, gt=0, description="pixel factor before mean/std; default 1/255, so "
                                                             "mean/std are of [0, 1] pixels")
    random_crop: bool = Field(False, description="training crops at random positions (else the centre)")
    flip: bool = Field(False, description="training flips horizontally with probability 0.5")
    mode: Literal["RGB", "L"] = Field("RGB", description="RGB (3 channels) or L (grey, 1 channel)")
    normalize: bool = Field(True, description="subtract mean, divide by std (per channel)")
    mean: Optional[list[float]] = Field(None, description="per-channel mean of [0, 1] pixels; default: computed "
                                                          "on the training split")
    std: Optional[list[float]] = Field(None, description="per-channel std; as mean")
    stats_samples: int = Field(1000, ge=1, description="training images used to compute mean/std")
    classes: Optional[list[str]] = Field(None, min_length=2, description="class folder names in label order; "
                                                                         "default: the training folders, sorted")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg"], min_length=1)
    workers: Optional[int] = Field(None, ge=0, description="DataLoader worker processes; default min(4, CPUs); "
                                                          "0 decodes in the main process")

    @field_validator("size")
    @classmethod
    def _size(cls, value: Optional[Union[int, list[int]]]) -> Optional[list[int]]:
        if value is None:
            return None
        size = [value, value] if isinstance(value, int) else value
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"expected a positive number or [height, width], got {value!r}")
        return size

    @field_validator("resize")
    @classmethod
    def _resize(cls, value: Optional[Union[int, list[int]]]) -> Optional[Union[int, list[int]]]:
        if isinstance(value, list) and len(value) != 2:
            raise ValueError(f"expected the shorter side or [height, width], got {value!r}")
        return value


def scan(root: Path, key: str, extensions: list[str],
         classes: Optional[list[str]]) -> tuple[list[str], dict[str, list[Path]]]:
    """(classes, {class: files}) of a class-per-sub-folder tree; an empty class folder is an error."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{key} ({root}): no class sub-folders; expected {root}/<class>/<image files>")
    found = {}
    for folder in folders:
        files = image_files(folder, extensions)
        if not files:
            raise DataError(f"{key} ({root}): class folder '{folder.name}' has no image "
                            f"({', '.join(sorted(_suffixes(extensions)))}); "
                            f"remove it or add images")
        found[folder.name] = files
    if classes is not None:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DataError(f"{key} ({root}): class folder '{unknown[0]}' is not in data.params.classes "
                            f"({', '.join(classes)})")
    return classes or class_order(found), found


def _suffixes(extensions: list[str]) -> set[str]:
    return {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}


def image_files(folder: Path, extensions: list[str]) -> list[Path]:
    """The image files under `folder` (sub-folders searched too), in a stable order."""
    suffixes = _suffixes(extensions)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def folder_inputs(params: ImageFolderParams, path: str, key: str) -> tuple[list[str], DatasetSplit]:
    """(file names relative to the folder, a split of them) for unlabelled images: a flat folder or
    class sub-folders (their names are not read as labels), decoded as the run evaluated them."""
    root = require(path, key, "folder")
    # hidden folders and files are skipped: a copied folder carries ._name metadata files (macOS)
    # with an image's extension that are no images
    files = [p for p in image_files(root, params.extensions)
             if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise DataError(f"{key} ({root}): no image ({', '.join(sorted(_suffixes(params.extensions)))}) in it or "
                        f"its sub-folders")
    check_headers(files, key)
    if params.normalize and (params.mean is None or params.std is None):
        raise DataError("data.params: the run's config records no mean/std (a config that was never trained); "
                        "give the run directory, or a config of the run that made the weights")
    if params.size is None:
        raise DataError("data.params: the run's config records no image size (a config that was never trained); "
                        "give the run directory, or a config of the run that made the weights")
    transform = _transform(params, params.size, params.mean if params.normalize else None,
                           params.std if params.normalize else None)
    workers = params.workers if params.workers is not None else min(4, os.cpu_count() or 1)
    n = len(files)
    split = DatasetSplit(FileReader([str(p) for p in files], transform), torch.arange(n),
                         torch.zeros(n, dtype=torch.int64), (transform.channels, *transform.size), workers)
    return [str(p.relative_to(root)) for p in files], split


def check_headers(files: list[Path], key: str) -> list[tuple[int, int]]:
    """Open every file's header (cheap: no decoding), so that a non-image fails now, named.
    Returns each image's (height, width)."""
    from PIL import Image

    sizes = []
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.append((image.height, image.width))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{key}: cannot read image {path}: {str(exc).strip().splitlines()[0]}") from None
    return sizes


def common_size(files: list[str], sizes: list[tuple[int, int]], root: str) -> list[int]:
    """The default `size`: the images' own, when they all share one. A fixed default (224) would
    upsample small images (28x28 by 8x, for 64x the compute) and shrink large ones unasked; with
    mixed sizes no single size is right for every data set, so the user picks it."""
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    if len(counts) == 1:
        return list(sizes[0])
    common = max(counts, key=counts.get)
    other = next(i for i, s in enumerate(sizes) if s != common)
    first = sizes.index(common)
    raise DataError(f"data.params.size: required, because the images under {root} have {len(counts)} different "
                    f"sizes (e.g. {common[0]}x{common[1]} in {files[first]}, {sizes[other][0]}x{sizes[other][1]} "
                    f"in {files[other]}); set data.params.size, e.g. {list(common)} (the most common, height x "
                    f"width): images are resized to cover it and centre-cropped")


class FileReader:
    """Sample id -> decoded tensor (picklable, so DataLoader workers can use it)."""

    def __init__(self, files: list[str], transform: ImageTransform) -> None:
        self.files, self.transform = files, transform

    def __call__(self, sample: int, seed: Optional[int]) -> Union[torch.Tensor, ReadFailure]:
        return self.transform(self.files[sample], seed)


@DATASETS.register("image_folder", params=ImageFolderParams)
def image_folder(params: ImageFolderParams, *, seed: int) -> DataBundle:
    """Images in one sub-folder per class (PNG/JPEG), decoded by DataLoader workers."""
    classes, files, given, sizes = list_images(params)
    size = params.size or common_size(files, sizes, ", ".join(params.sources().values()))
    transform = _transform(params, size)
    workers = params.workers if params.workers is not None else min(4, os.cpu_count() or 1)
    shape = (transform.channels, *transform.size)

    def make_splits(transform: ImageTransform) -> dict[str, DatasetSplit]:
        reader = FileReader(files, transform)
        augmented = params.random_crop or params.flip
        return carve_splits({s: DatasetSplit(reader, ids, y, shape, workers, augmented) for s, (ids, y) in given.items()},
                            params, given[params.reference()][1], params.key_of(params.reference()))

    splits = make_splits(transform)
    fitted: dict = {"classes": classes, "size": size}
    if params.normalize:
        given_stats = params.mean is not None and params.std is not None
        mean, std = (params.mean, params.std) if given_stats else channel_stats(
            splits.get("train", next(iter(splits.values()))), params.stats_samples, params.split_seed)
        _check_stats(mean, std, transform.channels)
        splits = make_splits(_transform(params, size, mean, std))
        fitted.update(mean=mean, std=std)
    return DataBundle(
        splits=splits, task="multiclass", num_outputs=len(classes), class_names=classes,
        info={"source": f"image folders {', '.join(params.sources().values())}", "workers": workers,
              **split_info(params, {name: len(s) for name, s in splits.items()}, True)},
        fitted=fitted,
    )


def list_images(params: ImageFolderParams) -> tuple[list[str], list[str], dict[str, tuple[torch.Tensor, torch.Tensor]],
                                                    list[tuple[int, int]]]:
    """(classes, every file, {split: (file ids, labels)}, every file's (height, width)) of the
    folders the params name."""
    roots = {split: require(path, params.key_of(split), "folder") for split, path in params.sources().items()}
    first = params.reference()
    classes, by_class = scan(roots[first], params.key_of(first), params.extensions, params.classes)
    per_split = {first: by_class}
    for split in roots:
        if split != first:
            per_split[split] = scan(roots[split], params.key_of(split), params.extensions, classes)[1]
    files: list[str] = []
    sizes: list[tuple[int, int]] = []
    given = {}
    for split, by_class in per_split.items():
        first, labels = len(files), []
        for name, paths in by_class.items():
            sizes += check_headers(paths, params.key_of(split))
            files += [str(p) for p in paths]
            labels += [classes.index(name)] * len(paths)
        given[split] = (torch.arange(first, len(files)), torch.tensor(labels, dtype=torch.int64))
    return classes, files, given, sizes


def _transform(params: ImageFolderParams, size: list[int], mean: Optional[list[float]] = None,
               std: Optional[list[float]] = None) -> ImageTransform:
    """The one transform of every split (and of `predict`), from the resolved params
    (augmentation only in training passes)."""
    resize = tuple(params.resize) if isinstance(params.resize, list) else params.resize
    if isinstance(resize, tuple) and (resize[0] < size[0] or resize[1] < size[1]):
        raise DataError(f"data.params.resize: {list(resize)} is smaller than data.params.size {size}, which is "
                        f"cropped out of it; make resize at least size")
    return ImageTransform(size=(size[0], size[1]), resize=resize, mode=params.mode, random_crop=params.random_crop,
                          flip=params.flip, resample=params.resample or "bilinear", rescale=params.rescale,
                          mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None)


def _check_stats(mean: list[float], std: list[float], channels: int) -> None:
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise DataError(f"data.params.{name}: {len(values)} values for {channels} channels (mode)")
    if min(std) <= 0:
        raise DataError(f"data.params.std: every value must be positive, got {std}")


def channel_stats(train: DatasetSplit, samples: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to `samples` training images (chosen by seed), un-augmented."""
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    train = train.subset(chosen.sort().values)  # its own loader, dropped when done
    total = torch.zeros(train.sample_shape[0], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for x, _ in train.batches(64, torch.device("cpu")):
        x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(max(v, 1e-3), 6) for v in std.tolist()]
