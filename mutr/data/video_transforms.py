"""The official training augmentation for clips (architecture.md §15), seeded per sample, and collate.

Every transform is ``t(images, target, rng) -> (images, target)`` on a list of same-size PIL
images and a target dict (absolute xyxy ``boxes`` [T, 4] with inclusive max indices, ``masks``
[T, H, W] bool, ``valid`` [T] bool, optional ``caption``). Randomness comes only from ``rng``
(a NumPy Generator made from the sample's seed), so a sample is reproducible and a resumed run
augments identically, whatever the number of DataLoader workers.

Faithful to ReferFormer/MUTR ``transforms_video.py`` in every geometric rule (the flip maps
x → W - x without -1, crops clamp boxes to W/H, masks resize with legacy ``nearest``, Check tests
x2 > x1 and y2 > y1 on boxes). One deliberate difference: PhotometricDistort clips to [0, 255]
before the uint8 cast, where the official cast wraps out-of-range values around.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mutr.data.common import ClipBatch, ClipSample
from mutr.errors import InputError
from mutr.io.transforms import to_model_input

Images = list[Image.Image]
Target = dict[str, Any]
Transform = Callable[[Images, Target, np.random.Generator], tuple[Any, Target]]

TRAIN_SCALES = (288, 320, 352, 392, 416, 448, 480, 512)
TRAIN_MAX_SIZE = 640
SIZE_DIVISIBILITY = 32


def flip_caption(caption: str) -> str:
    """Swap "left" and "right" as the official flip does (plain substring replacement)."""
    return caption.replace("left", "@").replace("right", "left").replace("@", "right")


def hflip(images: Images, target: Target) -> tuple[Images, Target]:
    w = images[0].width
    target = dict(target)
    b = target["boxes"]
    target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    target["masks"] = target["masks"].flip(-1)
    if target.get("caption") is not None:
        target["caption"] = flip_caption(target["caption"])
    return [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images], target


def resized_hw(w: int, h: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(H, W) for a short side of ``size``; the official rule (``round`` for max_size, then
    truncation of the long side), which is not torchvision's ``T.Resize`` rule."""
    if max_size is not None:
        lo, hi = float(min(w, h)), float(max(w, h))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    return (int(size * h / w), size) if w < h else (size, int(size * w / h))


def resize(images: Images, target: Target, size: int, max_size: int | None = None) -> tuple[Images, Target]:
    w, h = images[0].size
    nh, nw = resized_hw(w, h, size, max_size)
    if (nh, nw) == (h, w):
        return images, target
    images = [im.resize((nw, nh), Image.Resampling.BILINEAR) for im in images]
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    masks = target["masks"]
    # legacy 'nearest' at an explicit size, as the official interpolate call
    target["masks"] = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="nearest")[:, 0] > 0.5
    target["size"] = torch.tensor([nh, nw])
    return images, target


def crop(images: Images, target: Target, top: int, left: int, h: int, w: int) -> tuple[Images, Target]:
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([w, h], dtype=torch.float32)).clamp(min=0)
    target["boxes"] = boxes.reshape(-1, 4)
    target["masks"] = target["masks"][:, top:top + h, left:left + w]
    target["size"] = torch.tensor([h, w])
    return [im.crop((left, top, left + w, top + h)) for im in images], target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Images, Target]:
        return hflip(images, target) if rng.random() < self.p else (images, target)


class RandomResize:
    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Images, Target]:
        return resize(images, target, self.sizes[int(rng.integers(len(self.sizes)))], self.max_size)


class RandomSizeCrop:
    """A random crop with each side in [min_size, min(side, max_size)] (clamped for small clips)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Images, Target]:
        iw, ih = images[0].size
        w = int(rng.integers(min(self.min_size, iw), min(iw, self.max_size), endpoint=True))
        h = int(rng.integers(min(self.min_size, ih), min(ih, self.max_size), endpoint=True))
        top, left = int(rng.integers(0, ih - h, endpoint=True)), int(rng.integers(0, iw - w, endpoint=True))
        return crop(images, target, top, left, h, w)


class PhotometricDistort:
    """Brightness ±32, contrast 0.5–1.5 before or after HSV saturation 0.5–1.5 and hue ±18,
    then a random channel permutation; drawn independently for every frame. cv2 treats the RGB
    array as BGR, as the official code does."""

    PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Images, Target]:
        return [self.distort(np.asarray(im, dtype=np.float32), rng) for im in images], target

    def distort(self, img: np.ndarray, rng: np.random.Generator) -> Image.Image:
        img = img.copy()
        if rng.integers(2):
            img += rng.uniform(-32, 32)
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            img *= rng.uniform(0.5, 1.5)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if rng.integers(2):
            img[:, :, 1] *= rng.uniform(0.5, 1.5)
        if rng.integers(2):
            hue = img[:, :, 0]
            hue += rng.uniform(-18.0, 18.0)
            hue[hue > 360.0] -= 360.0
            hue[hue < 0.0] += 360.0
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        if not contrast_first and rng.integers(2):
            img *= rng.uniform(0.5, 1.5)
        if rng.integers(2):
            img = img[:, :, self.PERMS[int(rng.integers(6))]]
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


class RandomSelect:
    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        return (self.first if rng.random() < self.p else self.second)(images, target, rng)


class Check:
    """valid = the box still has positive width and height (x2 > x1, y2 > y1 on inclusive
    indices, so a one-pixel-wide object is invalid, §19.6); invalid boxes become zeros."""

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Images, Target]:
        b = target["boxes"]
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        target = dict(target, boxes=torch.where(keep[:, None], b, torch.zeros_like(b)), valid=keep)
        return images, target


class ToTensorNormalize:
    """Frames → [T, 3, H, W] ImageNet-normalized; boxes → cxcywh divided by (W, H, W, H)."""

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[torch.Tensor, Target]:
        frames = to_model_input(images)
        h, w = frames.shape[-2:]
        x1, y1, x2, y2 = target["boxes"].unbind(-1)
        cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
        return frames, dict(target, boxes=cxcywh / torch.tensor([w, h, w, h], dtype=torch.float32))


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, images: Images, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        for t in self.transforms:
            images, target = t(images, target, rng)
        return images, target


def train_transforms(scales: Sequence[int] = TRAIN_SCALES, max_size: int = TRAIN_MAX_SIZE,
                     crop_scales: Sequence[int] = (400, 500, 600), crop_range: tuple[int, int] = (384, 600),
                     photometric: bool = True) -> Compose:
    """The official recipe: flip, per-frame photometric distortion, then with p 0.5 either
    RandomResize(scales) or RandomResize(crop_scales) → RandomSizeCrop → RandomResize(scales);
    Check; ToTensor + Normalize. Smaller ``scales`` etc. give the same recipe for tiny tests."""
    return Compose([
        RandomHorizontalFlip(),
        *([PhotometricDistort()] if photometric else []),
        RandomSelect(RandomResize(scales, max_size),
                     Compose([RandomResize(crop_scales), RandomSizeCrop(*crop_range),
                              RandomResize(scales, max_size)])),
        Check(),
        ToTensorNormalize(),
    ])


def plain_transforms() -> Compose:
    """No augmentation (AVSBench's own recipe): Check + ToTensor + Normalize at the stored size."""
    return Compose([Check(), ToTensorNormalize()])


def collate(samples: Sequence[ClipSample], size_divisibility: int = SIZE_DIVISIBILITY) -> ClipBatch:
    """Pad clips to the batch maximum rounded up to ``size_divisibility`` (32 as in training).

    Frames pad with 0 and ``mask`` marks padding True; GT masks pad with False. A batch must
    hold one kind of reference (use ``JointSampler(group_size=batch_size)`` when mixing).
    """
    if not samples:
        raise InputError("collate got no samples: the DataLoader batch is empty")
    if len({s.frames.shape[0] for s in samples}) > 1:
        raise InputError("clips in a batch have different frame counts; sample the same num_frames everywhere")
    kinds = {s.caption is not None for s in samples}
    if len(kinds) > 1:
        raise InputError("a batch mixes text and audio samples; build JointSampler with group_size=batch_size")
    t = samples[0].frames.shape[0]
    d = size_divisibility
    h = -(-max(s.frames.shape[-2] for s in samples) // d) * d
    w = -(-max(s.frames.shape[-1] for s in samples) // d) * d
    frames = torch.zeros(len(samples), t, 3, h, w, dtype=samples[0].frames.dtype)
    mask = torch.ones(len(samples), t, h, w, dtype=torch.bool)
    targets = []
    for i, s in enumerate(samples):
        sh, sw = s.frames.shape[-2:]
        frames[i, :, :, :sh, :sw] = s.frames
        mask[i, :, :sh, :sw] = False
        gt = torch.zeros(t, h, w, dtype=torch.bool)
        gt[:, :sh, :sw] = s.target["masks"]
        targets.append(dict(s.target, masks=gt))
    sources = [s.source for s in samples]
    if kinds == {True}:
        return ClipBatch(frames, mask, targets, captions=[s.caption for s in samples], sources=sources)
    if len({tuple(s.audio.shape) for s in samples}) > 1:  # type: ignore[union-attr]
        raise InputError("audio references in a batch have different example counts; pad them to one N")
    audio = torch.stack([s.audio for s in samples])  # type: ignore[misc]
    audio_mask = torch.stack([s.audio_mask if s.audio_mask is not None
                              else torch.zeros(s.audio.shape[0], dtype=torch.bool) for s in samples])  # type: ignore[union-attr]
    return ClipBatch(frames, mask, targets, audio=audio, audio_mask=audio_mask, sources=sources)
