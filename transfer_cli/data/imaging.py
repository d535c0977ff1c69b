"""Decoding one image file into a normalized (C, H, W) tensor, in a DataLoader worker:
resize, centre or random crop, horizontal flip, normalization. Pillow only (no torchvision)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from transfer_cli.data.loader import ReadFailure


@dataclass(frozen=True)
class ImageTransform:
    """size: (H, W) fed to the model. resize: the shorter side before cropping (None: just
    enough to cover `size`). random_crop/flip apply only in training (when a seed is given)."""

    size: tuple[int, int]
    resize: Optional[Union[int, tuple[int, int]]] = None  # the shorter side, or an exact (H, W)
    mode: str = "RGB"
    random_crop: bool = False
    flip: bool = False
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    resample: str = "bilinear"
    rescale: Optional[float] = None  # pixel factor before mean/std; None: 1/255

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def __call__(self, path: str, seed: Optional[int]) -> Union[torch.Tensor, ReadFailure]:
        from PIL import Image

        rng = random.Random(seed) if seed is not None else None
        try:
            with Image.open(path) as image:
                image.draft(self.mode, self._cover(image.size))  # JPEG: decode at a reduced scale when it can
                image = image.convert(self.mode)
            image = self._resized(image)
            image = self._cropped(image, rng)
            if self.flip and rng is not None and rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001  whatever Pillow raises, the file is unreadable
            message = str(exc).strip().splitlines()
            return ReadFailure(path, message[0] if message else type(exc).__name__)
        x = torch.from_numpy(pixels.copy()).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1).float()
        if self.rescale is not None:  # a model's own factor (preprocessor_config.json)
            x.mul_(self.rescale)
            if self.mean is None or self.std is None:
                return x
            return x.sub_(torch.tensor(self.mean).view(-1, 1, 1)).div_(torch.tensor(self.std).view(-1, 1, 1))
        if self.mean is None or self.std is None:
            return x.div_(255)
        # (x / 255 - mean) / std in two in-place passes
        mean, std = torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)
        return x.sub_(mean * 255).div_(std * 255)

    def _cover(self, size: tuple[int, int]) -> tuple[int, int]:
        """The smallest (w, h) with the image's aspect ratio that covers the crop (and `resize`)."""
        width, height = size
        h, w = self.size
        if isinstance(self.resize, tuple):  # exact (H, W), aspect ratio not kept (as ViT's processors do)
            return self.resize[1], self.resize[0]
        scale = max(h / height, w / width)
        if self.resize:
            scale = max(scale, self.resize / min(width, height))
        return max(w, round(width * scale)), max(h, round(height * scale))

    def _resized(self, image):  # noqa: ANN001, ANN202  PIL types stay out of the signature
        from PIL import Image

        target = self._cover(image.size)
        filter_ = getattr(Image.Resampling, self.resample.upper())
        return image if image.size == target else image.resize(target, filter_)

    def _cropped(self, image, rng: Optional[random.Random]):  # noqa: ANN001, ANN202
        width, height = image.size
        h, w = self.size
        if self.random_crop and rng is not None:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        else:
            left, top = (width - w) // 2, (height - h) // 2
        return image.crop((left, top, left + w, top + h))
