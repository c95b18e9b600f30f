"""The official inference preprocessing, reproduced bit for bit without torchvision.

The official scripts run ``T.Compose([T.Resize(432), T.ToTensor(), T.Normalize(mean, std)])`` on
PIL images. ``T.Resize(432)`` on a PIL image is ``PIL.Image.resize`` with PIL's (antialiased)
bilinear filter to the size given by torchvision's ``_compute_resized_output_size``
(torchvision/transforms/functional.py):

* short side -> ``size``; long side -> ``int(size * long / short)``, truncated (854x480 -> 768x432);
* with ``max_size``: if that long side exceeds it, long -> ``max_size`` and
  short -> ``int(max_size * size / long)``;
* an image already at the target size is returned unchanged.

A tensor resize without antialias, or rounding the long side, changes every input pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from mutr.errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INFERENCE_SIZE",
    "preprocess",
    "resize_short_side",
    "resized_size",
    "to_model_input",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INFERENCE_SIZE = 432

ImageT = TypeVar("ImageT", Image.Image, np.ndarray)


def resized_size(width: int, height: int, size: int = INFERENCE_SIZE, max_size: int | None = None) -> tuple[int, int]:
    """(width, height) after ``T.Resize(size, max_size=max_size)``; torchvision's rule exactly."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None:
        if max_size <= size:
            raise InputError(f"max_size ({max_size}) must be larger than the short-side size ({size}): raise max_size")
        if new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_short_side(image: ImageT, size: int = INFERENCE_SIZE, max_size: int | None = None) -> ImageT:
    """Resize so the short side is ``size``, like ``T.Resize(size)`` on a PIL image.

    Takes a PIL image or an [H, W, 3] uint8 array and returns the same kind.
    """
    is_array = isinstance(image, np.ndarray)
    pil = Image.fromarray(_check_array(image)) if is_array else image
    new_w, new_h = resized_size(pil.width, pil.height, size, max_size)
    if (new_w, new_h) != (pil.width, pil.height):
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
    elif is_array:
        return image
    return np.asarray(pil) if is_array else pil


def to_model_input(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """Frames of one size -> [T, 3, H, W] float32: ``ToTensor`` (/255) then ImageNet ``Normalize``.

    Matches torchvision's operation order (``div(255)``, then ``sub_(mean).div_(std)``) so values
    are identical, not merely close.
    """
    if len(images) == 0:
        raise InputError("to_model_input got no frames: pass at least one image")
    arrays = [_check_array(np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else im) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"frames have different sizes {sorted(shapes)}: resize them to one size first")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [T, H, W, 3] -> [T, 3, H, W]
    x = x.to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def preprocess(
    images: Sequence[Image.Image | np.ndarray], size: int = INFERENCE_SIZE, max_size: int | None = None
) -> torch.Tensor:
    """The official inference transform for a clip: resize each frame, then ``to_model_input``."""
    return to_model_input([resize_short_side(im, size, max_size) for im in images])


def _check_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an [H, W, 3] uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image
