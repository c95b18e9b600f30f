"""Synthetic clips with exact ground truth: moving coloured shapes that speak in tones.

Tests, smoke runs and tutorials need data that exercises the whole pipeline without downloads,
and whose answer is known exactly. Every clip has two or three objects, each in its own vertical
band (so "left"/"right" stay true in every frame and a flip swaps them), distinct colours and
shapes, and captions that name them ("the red circle", "the square on the left"). Each object
has a tone of its own; which objects sound decides the audio-referred target. Everything is a
pure function of the seed.

:func:`write_synthetic` writes a dataset in a real on-disk layout (``mutr.data.synthetic_layouts``);
:class:`SyntheticDataset` yields :class:`~mutr.data.common.ClipSample` directly, for training tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mutr.data.common import ClipSample, Seed, make_rng, make_target
from mutr.data.video_transforms import Transform, plain_transforms
from mutr.errors import InputError
from mutr.model.vggish import waveform_to_examples

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SAMPLE_RATE = 16000
LAYOUTS = ("ytvos", "davis", "avsbench-s4", "avsbench-ms3")
Layout = Literal["ytvos", "davis", "avsbench-s4", "avsbench-ms3"]
SPLITS: dict[str, tuple[str, ...]] = {
    "ytvos": ("train", "valid"), "davis": ("train", "valid"),
    "avsbench-s4": ("train", "val", "test"), "avsbench-ms3": ("train", "val", "test"),
}
_SPLIT_CODES = {"train": 0, "valid": 1, "val": 1, "test": 2}


def captions_for(colour: str, shape: str, side: str) -> tuple[str, str, str, str]:
    """Four expressions per object (Ref-DAVIS has four annotator sets; YTVOS uses the first two)."""
    where = "in the middle" if side == "middle" else f"on the {side}"
    return (f"the {colour} {shape}", f"the {shape} {where}", f"a {colour} {shape}",
            f"the {colour} {shape} {where}")


VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"the", "a", "on", "in", "left", "right", "middle", *COLOURS, *SHAPES}))
"""Every word a synthetic caption uses (lower case), for training a tiny tokenizer."""


def tone_frequency(colour: str, shape: str) -> float:
    """Each (colour, shape) kind has its own pitch, 250–2120 Hz, well inside VGGish's mel range."""
    kind = list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)
    return 250.0 + 110.0 * kind


@dataclass(frozen=True)
class SyntheticObject:
    obj_id: int  # palette value in annotation PNGs, 1-based
    colour: str
    shape: str
    side: Literal["left", "middle", "right"]
    frequency: float
    captions: tuple[str, str, str, str]

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}"


@dataclass
class SyntheticClip:
    """``frames`` [T, H, W, 3] uint8, ``ids`` [T, H, W] uint8 object ids (0 = background)."""

    frames: np.ndarray
    ids: np.ndarray
    objects: list[SyntheticObject]
    sounding: tuple[int, ...]  # obj_ids whose tone is in the audio

    def mask(self, obj_ids: int | Sequence[int]) -> np.ndarray:
        """[T, H, W] bool: the pixels of one object, or of several (the sounding union)."""
        return np.isin(self.ids, np.atleast_1d(obj_ids))

    def waveform(self, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """[S] float32 in [-0.5, 0.5]: the sum of the sounding objects' sine tones."""
        t = np.arange(int(round(seconds * sample_rate))) / sample_rate
        freqs = [o.frequency for o in self.objects if o.obj_id in self.sounding]
        wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) * (0.5 / max(1, len(freqs)))
        return np.asarray(wave, dtype=np.float32)


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    return (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2 + 0.5)  # triangle


def make_clip(seed: Seed, *, num_frames: int, size: int | tuple[int, int], num_objects: int | None = None,
              sounding: Literal["one", "some"] = "one", absent_prob: float = 0.0) -> SyntheticClip:
    """One clip: objects move inside their bands (bouncing vertically); an object other than
    the first may vanish from a frame after the first with ``absent_prob``."""
    rng = make_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < 16 or num_frames < 1:
        raise InputError(f"synthetic clips need size >= 16 and num_frames >= 1, got {size}, {num_frames}")
    n = int(num_objects or rng.integers(2, 4))
    colours = [list(COLOURS)[i] for i in rng.choice(len(COLOURS), n, replace=False)]
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(max(n, len(SHAPES)))[:n]]
    background = np.array([int(rng.integers(20, 70))] * 3, dtype=np.uint8)
    frames = np.broadcast_to(background, (num_frames, h, w, 3)).copy()
    ids = np.zeros((num_frames, h, w), dtype=np.uint8)
    objects = []
    band = w / n
    for k in range(n):
        side = "left" if k == 0 else "right" if k == n - 1 else "middle"
        r = max(2.0, min(band, h) * rng.uniform(0.18, 0.28))
        lo_x, hi_x = k * band + r + 1, (k + 1) * band - r - 2
        cx, cy = rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(r, h - 1 - r)
        vx, vy = rng.uniform(-1, 1) * band / 8, rng.uniform(-1, 1) * h / 6
        obj = SyntheticObject(k + 1, colours[k], shapes[k], side, tone_frequency(colours[k], shapes[k]),
                              captions_for(colours[k], shapes[k], side))
        objects.append(obj)
        for t in range(num_frames):
            if t > 0 and k > 0 and rng.random() < absent_prob:
                continue
            m = _shape_mask(obj.shape, h, w, cx, cy, r)
            frames[t][m], ids[t][m] = COLOURS[obj.colour], obj.obj_id
            cx, vx = _bounce(cx + vx, vx, lo_x, max(lo_x, hi_x))
            cy, vy = _bounce(cy + vy, vy, r, h - 1 - r)
    if sounding == "one":
        heard: tuple[int, ...] = (int(rng.integers(n)) + 1,)
    else:
        heard = tuple(sorted(int(i) + 1 for i in rng.choice(n, int(rng.integers(1, n + 1)), replace=False)))
    return SyntheticClip(frames, ids, objects, heard)


def _bounce(pos: float, vel: float, lo: float, hi: float) -> tuple[float, float]:
    if pos < lo:
        return 2 * lo - pos, -vel
    if pos > hi:
        return 2 * hi - pos, -vel
    return pos, vel


def layout_clip(layout: Layout, split: str, index: int, *, num_frames: int, size: int | tuple[int, int],
                seed: int) -> SyntheticClip:
    """The clip :func:`write_synthetic` writes as video ``index`` of ``split``: the exact GT."""
    audio = layout.startswith("avsbench")
    return make_clip([seed, _SPLIT_CODES[split], index], num_frames=5 if audio else num_frames, size=size,
                     sounding="some" if layout == "avsbench-ms3" else "one",
                     absent_prob=0.0 if audio else 0.15)


def write_synthetic(layout: Layout, root: str | Path, *, num_videos: int = 4, num_frames: int = 8,
                    size: int | tuple[int, int] = (64, 96), seed: int = 0,
                    splits: Sequence[str] | None = None) -> Path:
    """Write a small dataset in ``layout``'s real on-disk layout under ``root``; returns the
    path to pass as the dataset root. AVSBench clips always have 5 frames and 5 s of audio."""
    from mutr.data import synthetic_layouts  # imports this module: deferred to avoid a cycle

    if layout not in LAYOUTS:
        raise InputError(f"unknown synthetic layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    splits = tuple(splits or SPLITS[layout])
    bad = [s for s in splits if s not in SPLITS[layout]]
    if bad:
        raise InputError(f"{layout} has no split {bad[0]!r}; choose from {', '.join(SPLITS[layout])}")
    clips = {s: [layout_clip(layout, s, i, num_frames=num_frames, size=size, seed=seed)
                 for i in range(num_videos)] for s in splits}
    return synthetic_layouts.WRITERS[layout](Path(root), clips)


def video_name(split: str, index: int) -> str:
    """The video id synthetic layouts use for clip ``index`` of ``split``."""
    return f"syn_{split}_{index:04d}"


class SyntheticDataset(Dataset):
    """In-memory clips as :class:`ClipSample`: text (one object, one of its captions) or audio
    (the sounding objects, log-mel of their tones, one 0.96-s example per frame)."""

    def __init__(self, reference: Literal["text", "audio"] = "text", *, num_videos: int = 8,
                 num_frames: int = 5, size: int | tuple[int, int] = (64, 64), seed: int = 0,
                 transforms: Transform | None = None) -> None:
        if reference not in ("text", "audio"):
            raise InputError(f"reference must be 'text' or 'audio', not {reference!r}")
        self.reference, self.num_videos, self.num_frames = reference, num_videos, num_frames
        self.size, self.seed = size, seed
        self.transforms = transforms or plain_transforms()

    def __len__(self) -> int:
        return self.num_videos

    def clip(self, index: int) -> SyntheticClip:
        return make_clip([self.seed, index], num_frames=self.num_frames, size=self.size,
                         sounding="one" if self.reference == "text" else "some", absent_prob=0.1)

    def __getitem__(self, key: int | tuple[int, int]) -> ClipSample:
        index, seed = key if isinstance(key, tuple) else (key, [self.seed, key])
        return self.get(index, seed)

    def get(self, index: int, seed: Seed) -> ClipSample:
        clip, rng = self.clip(index), make_rng(seed)
        images = [Image.fromarray(f) for f in clip.frames]
        t = self.num_frames
        if self.reference == "text":
            obj = clip.objects[int(rng.integers(len(clip.objects)))]
            caption = obj.captions[int(rng.integers(4))]
            target = make_target(clip.mask(obj.obj_id), [True] * t, range(t), caption)
            frames, target = self.transforms(images, target, rng)
            return ClipSample(frames, target, caption=target.pop("caption"),
                              source=f"synthetic/{index}/{obj.obj_id}")
        target = make_target(clip.mask(clip.sounding), [True] * t, range(t))
        frames, target = self.transforms(images, target, rng)
        examples = waveform_to_examples(clip.waveform(t), SAMPLE_RATE)[:t]
        audio = torch.from_numpy(examples)[:, None]  # [N, 96, 64] → [N, 1, 96, 64]
        return ClipSample(frames, target, audio=audio, audio_mask=torch.zeros(len(audio), dtype=torch.bool),
                          source=f"synthetic/{index}/sound")
