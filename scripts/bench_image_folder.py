#!/usr/bin/env python
"""What one epoch over a 10,000-image folder costs: the `image_folder` source vs a plain PyTorch
Dataset + DataLoader doing the same decoding, in the same run.

    python scripts/bench_image_folder.py [--images 10000] [--workers 2] [--size 224 --resize 256] [--repeats 3]

Makes the folder once (JPEG photos-sized 320x240, 10 classes) under --root (default
/tmp/transfer-bench-images), then times `--repeats` training epochs of each variant, interleaved
(shuffled, random crop, flip, normalized; batches of 64, consumed on the CPU, no model), and reports
medians and the ratio. The first epoch of each includes starting its workers.
Also times building the data set (listing + opening every header + mean/std on 1000 images).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_folder(root: Path, images: int, classes: int = 10) -> Path:
    from PIL import Image

    marker = root / f".complete-{images}"
    if marker.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # smooth-ish content compresses like a photo
        image = Image.fromarray(base).resize((320, 240), Image.Resampling.BILINEAR)
        image.save(folder / f"img{i:05d}.jpg", quality=90)
    marker.touch()
    return root


class PlainDataset(torch.utils.data.Dataset):
    """What one writes by hand without torchvision: PIL decode, resize, crop, flip, to tensor, normalize."""

    def __init__(self, files: list[str], labels: list[int], size: int, resize: int) -> None:
        self.files, self.labels, self.size, self.resize = files, labels, size, resize
        self.mean = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
        self.std = torch.tensor([0.25, 0.25, 0.25]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.open(self.files[i]).convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        w, h = image.size
        left, top = random.randint(0, w - self.size), random.randint(0, h - self.size)
        image = image.crop((left, top, left + self.size, top + self.size))
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, self.labels[i]


def one_epoch(batches) -> float:
    tic = time.perf_counter()
    for x, y in batches:
        pass
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/transfer-bench-images"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    tic = time.perf_counter()
    root = make_folder(args.root / str(args.images), args.images)
    print(f"folder: {root} ({args.images} JPEG 320x240, 10 classes), ready in {time.perf_counter() - tic:.1f} s")

    from transfer_cli.data import DATASETS

    params = {"train": str(root), "size": args.size, "resize": args.resize, "random_crop": True, "flip": True,
              "workers": args.workers}
    tic = time.perf_counter()
    data = DATASETS.build("image_folder", params, seed=0)
    build_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    DATASETS.build("image_folder", {**params, "mean": [0.5] * 3, "std": [0.25] * 3}, seed=0)
    scan_seconds = time.perf_counter() - tic
    print(f"build: {build_seconds:.1f} s (listing + opening {args.images} headers: {scan_seconds:.1f} s; "
          f"the rest: mean/std on 1000 images)")

    split = data.split("train")
    cpu = torch.device("cpu")
    files = [str(p) for p in sorted(root.rglob("*.jpg"))]
    labels = [int(Path(f).parent.name[-2:]) for f in files]
    loader = torch.utils.data.DataLoader(PlainDataset(files, labels, args.size, args.resize), batch_size=args.batch,
                                         shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    ours, plain = [], []
    for epoch in range(args.repeats):  # interleaved, so that a change of machine load hits both alike
        ours.append(one_epoch(split.batches(args.batch, cpu, shuffle=True, seed=0, epoch=epoch)))
        plain.append(one_epoch(loader))

    med_ours, med_plain = statistics.median(ours), statistics.median(plain)
    print(f"epoch, {args.images} images -> {args.size}x{args.size}, {args.workers} workers, batch {args.batch} "
          f"({os.cpu_count()} CPUs):")
    print(f"  image_folder  median {med_ours:6.1f} s  ({args.images / med_ours:6.0f} images/s)  runs {[round(t, 1) for t in ours]}")
    print(f"  plain PyTorch median {med_plain:6.1f} s  ({args.images / med_plain:6.0f} images/s)  runs {[round(t, 1) for t in plain]}")
    print(f"  ratio image_folder / plain: {med_ours / med_plain:.2f}")


if __name__ == "__main__":
    main()
