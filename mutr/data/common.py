"""What every dataset shares: the training sample type, GT boxes from masks, and layout checks.

All four benchmarks reach the model through :class:`ClipSample`, so the trainer never branches
on the dataset: text and audio references differ only in which field is set. Randomness comes in
as a seed per sample (from :class:`mutr.data.joint.JointSampler`), never from global state, so a
sample is a pure function of (dataset, index, seed) and a resumed run sees the same clips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mutr.errors import InputError, MediaError

Seed = int | Sequence[int]


@dataclass
class ClipSample:
    """One training clip of T frames with its reference.

    ``frames`` [T, 3, H, W] float32, ImageNet-normalized, unpadded (collate pads).
    ``target``: ``masks`` [T, H, W] bool, ``boxes`` [T, 4] normalized cxcywh (zeros where
    invalid), ``valid`` [T] bool (the box exists, §19.6), ``labels`` [T] int64 (0: the binary
    "object" class), ``has_gt`` [T] bool (frames without annotation carry no loss: AVSBench S4
    train annotates only frame 0), ``frames_idx`` [T] int64 (source frame numbers), ``size``
    [2] (H, W), ``orig_size`` [2].
    Reference: ``caption`` for text datasets, or ``audio`` [N, 1, 96, 64] float32 VGGish
    log-mel with ``audio_mask`` [N] bool (True = padding) for audio datasets.
    """

    frames: Tensor
    target: dict[str, Tensor]
    caption: str | None = None
    audio: Tensor | None = None
    audio_mask: Tensor | None = None
    source: str = ""  # "<dataset>/<video>/<reference id>", for logs and debugging


@dataclass
class ClipBatch:
    """B clips padded to one size: ``frames`` [B, T, 3, H, W], ``mask`` [B, T, H, W] True = padding.

    ``targets`` keep per-clip dicts; their masks are padded with False to (H, W) (the official
    losses run over the padded grid, §19.5) while boxes stay normalized to each clip's own size.
    Exactly one of ``captions`` / ``audio`` is set; ``audio_mask`` [B, N] True = padding.
    """

    frames: Tensor
    mask: Tensor
    targets: list[dict[str, Tensor]]
    captions: list[str] | None = None
    audio: Tensor | None = None
    audio_mask: Tensor | None = None
    sources: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> ClipBatch:
        """Move every tensor (targets included) to ``device``."""
        move = lambda x: x.to(device) if isinstance(x, Tensor) else x  # noqa: E731
        return ClipBatch(move(self.frames), move(self.mask),
                         [{k: move(v) for k, v in t.items()} for t in self.targets],
                         self.captions, move(self.audio), move(self.audio_mask), self.sources)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool → xyxy float32 with *inclusive* max indices (x2 = last column, no +1), or
    zeros when empty: the official YTVOS box (§19.6), so a one-pixel-wide object gives x2 == x1."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def make_target(masks: np.ndarray, has_gt: Sequence[bool], frames_idx: Sequence[int],
                caption: str | None = None) -> dict[str, Any]:
    """The pre-transform target: absolute xyxy boxes, valid = the object has a pixel (Check
    later drops degenerate boxes), everything as tensors the transforms understand."""
    masks = np.ascontiguousarray(masks, dtype=bool)
    t, h, w = masks.shape
    target: dict[str, Any] = {
        "masks": torch.from_numpy(masks),
        "boxes": torch.from_numpy(np.stack([mask_to_box(m) for m in masks])),
        "valid": torch.from_numpy(masks.reshape(t, -1).any(axis=1)),
        "labels": torch.zeros(t, dtype=torch.int64),
        "has_gt": torch.as_tensor(list(has_gt), dtype=torch.bool),
        "frames_idx": torch.as_tensor(list(frames_idx), dtype=torch.int64),
        "orig_size": torch.tensor([h, w]),
        "size": torch.tensor([h, w]),
    }
    if caption is not None:
        target["caption"] = caption
    return target


def clean_caption(text: str) -> str:
    """Training captions are lower-cased with whitespace collapsed, as the official loader does."""
    return " ".join(text.lower().split())


def require(path: Path, layout: str) -> Path:
    """``path`` if it exists, else one line naming it and the layout it belongs to."""
    if not path.exists():
        raise InputError(f"missing {path}: expected the {layout} layout; point the data root at "
                         "the dataset folder or re-extract the missing files")
    return path


def read_json(path: Path, layout: str) -> Any:
    require(path, layout)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MediaError(f"{path} is not valid JSON ({e}); re-extract it from the {layout} download") from e


def open_image(path: Path, layout: str) -> Image.Image:
    """A loaded PIL image (file handle closed), or a one-line error naming the file."""
    require(path, layout)
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise MediaError(f"cannot decode {path} ({e}); re-extract it from the {layout} download") from e


def load_rgb(path: Path, layout: str) -> Image.Image:
    return open_image(path, layout).convert("RGB")


def load_label_map(path: Path, layout: str) -> np.ndarray:
    """Palette PNG → [H, W] object ids (the raw palette indices, not their colours)."""
    im = open_image(path, layout)
    if im.mode not in ("P", "L", "I", "I;16"):
        raise MediaError(f"{path} is a {im.mode} image; annotations must be palette (P) PNGs of object ids")
    return np.asarray(im).astype(np.int64)


def load_binary_mask(path: Path, layout: str) -> np.ndarray:
    """Any binary mask PNG → [H, W] bool with ``> 0`` on raw values (S4 stores 0/1 or 0/255,
    MS3 0/255 palettes: thresholding raw values works for all of them)."""
    im = open_image(path, layout)
    a = np.asarray(im)
    return (a > 0).any(axis=-1) if a.ndim == 3 else a > 0


def make_rng(seed: Seed) -> np.random.Generator:
    """The one RNG a sample's sampling and augmentation draw from."""
    return np.random.default_rng(seed if isinstance(seed, int) else list(seed))
