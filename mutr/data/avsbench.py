"""AVSBench S4 (single sound source) and MS3 (multiple sources), original release layout (§3.1).

Layout::

    <root>/Single-source/s4_meta_data.csv              rows: name, start, category, split
    <root>/Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<i>.png   i = 1..5
    <root>/Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<i>.png        train: i = 1 only
    <root>/Single-source/s4_data/{audio_wav,audio_log_mel}/<split>/<category>/<name>.{wav,pkl}
    <root>/Multi-sources/ms3_meta_data.csv             rows: name, split
    <root>/Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<i>.png                 (no split folder)
    <root>/Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<i>.png
    <root>/Multi-sources/ms3_data/{audio_wav,audio_log_mel}/<split>/<name>.{wav,pkl}

``root`` may also be the ``Single-source`` / ``Multi-sources`` folder itself. Audio is the
shipped log-mel pickle (read without running code) or the wav through the VGGish front end;
either way 5 examples, one per frame, the last repeated when the audio is shorter (the
reference preprocessing). The target is the union of sounding objects, binarised with ``> 0``.
"""

from __future__ import annotations

import csv
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mutr.data.common import ClipSample, Seed, load_binary_mask, load_rgb, make_rng, make_target, require
from mutr.data.safe_pickle import load_log_mel_pickle
from mutr.data.video_transforms import Transform, plain_transforms
from mutr.errors import InputError, MediaError
from mutr.model.vggish import waveform_to_examples

Subset = Literal["s4", "ms3"]
AudioSource = Literal["log_mel", "wav"]
NUM_FRAMES = 5
_DIRS = {"s4": ("Single-source", "s4"), "ms3": ("Multi-sources", "ms3")}
LAYOUTS = {
    "s4": "AVSBench S4 (<root>/Single-source/s4_meta_data.csv and s4_data/{visual_frames,gt_masks}/"
          "<split>/<category>/<name>/<name>_<i>.png, {audio_wav,audio_log_mel}/<split>/<category>/<name>.*)",
    "ms3": "AVSBench MS3 (<root>/Multi-sources/ms3_meta_data.csv, ms3_data/visual_frames/<name>/"
           "<name>.mp4_<i>.png, gt_masks/<split>/<name>/<name>_<i>.png, {audio_wav,audio_log_mel}/<split>/<name>.*)",
}


@dataclass(frozen=True)
class AVSVideo:
    name: str
    category: str  # S4 sound category; "" for MS3
    split: str


class AVSBenchFiles:
    """Where each file of one subset lives; the CSV rows of one split."""

    def __init__(self, root: str | Path, subset: Subset, split: str) -> None:
        if subset not in _DIRS:
            raise InputError(f"unknown AVSBench subset {subset!r}; choose 's4' or 'ms3'")
        folder, tag = _DIRS[subset]
        root = Path(root)
        self.subset, self.layout = subset, LAYOUTS[subset]
        csv_name = f"{tag}_meta_data.csv"
        top = root if (root / csv_name).exists() else root / folder  # avsbench_data/ or its subfolder
        require(top / csv_name, self.layout)
        self.base = require(top / f"{tag}_data", self.layout)
        self.videos = self._read_csv(top / csv_name, split)

    def _read_csv(self, path: Path, split: str) -> list[AVSVideo]:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise MediaError(f"{path} is empty; re-extract it from the {self.layout} download")
        header = [h.strip() for h in rows[0]]
        col = header.index("split") if "split" in header else (3 if self.subset == "s4" else 1)
        videos = [AVSVideo(r[0], r[2] if self.subset == "s4" else "", r[col]) for r in rows[1:] if len(r) > col]
        out = [v for v in videos if v.split == split]
        if not out:
            splits = sorted({v.split for v in videos})
            raise InputError(f"{path} has no videos in split {split!r}; choose one of {', '.join(splits)}")
        return out

    def _dir(self, kind: str, v: AVSVideo) -> Path:
        return self.base / kind / v.split / v.category if self.subset == "s4" else self.base / kind / v.split

    def frame(self, v: AVSVideo, i: int) -> Path:
        if self.subset == "s4":
            return self._dir("visual_frames", v) / v.name / f"{v.name}_{i + 1}.png"
        return self.base / "visual_frames" / v.name / f"{v.name}.mp4_{i + 1}.png"

    def mask(self, v: AVSVideo, i: int) -> Path:
        return self._dir("gt_masks", v) / v.name / f"{v.name}_{i + 1}.png"

    def audio(self, v: AVSVideo, source: AudioSource) -> Path:
        return self._dir("audio_log_mel", v) / f"{v.name}.pkl" if source == "log_mel" \
            else self._dir("audio_wav", v) / f"{v.name}.wav"

    def has_gt(self, v: AVSVideo) -> list[bool]:
        """S4 train annotates only the first frame; everything else all five."""
        return [True] + [not (self.subset == "s4" and v.split == "train")] * (NUM_FRAMES - 1)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """PCM16 wav → ([N] or [N, C] float64 = int16 / 32768, rate), as soundfile feeds VGGish;
    other encodings go through PyAV."""
    try:
        with wave.open(str(path), "rb") as f:
            if f.getsampwidth() == 2:
                pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
                pcm = pcm.reshape(-1, f.getnchannels()) if f.getnchannels() > 1 else pcm
                return pcm / 32768.0, f.getframerate()
    except (wave.Error, EOFError):
        pass
    from mutr.io.audio import load_audio

    samples, rate, _ = load_audio(path, sample_rate=None)
    return samples.astype(np.float64), rate


def pad_examples(x: Tensor, n: int = NUM_FRAMES, source: Path | str = "audio") -> Tensor:
    """[M, 1, 96, 64] → [n, 1, 96, 64]: the last example repeated (reference), extra ones dropped."""
    if len(x) == 0:
        raise MediaError(f"{source} is shorter than one VGGish example (0.975 s); AVSBench clips need 5 s of audio")
    if len(x) < n:
        x = torch.cat([x, x[-1:].expand(n - len(x), *x.shape[1:])])
    return x[:n].contiguous()


def load_audio_examples(path: Path, source: AudioSource, layout: str) -> Tensor:
    """The 5 log-mel examples of one clip, [5, 1, 96, 64] float32."""
    require(path, layout)
    if source == "log_mel":
        return pad_examples(load_log_mel_pickle(path), source=path)
    samples, rate = read_wav(path)
    return pad_examples(torch.from_numpy(waveform_to_examples(samples, rate))[:, None], source=path)


@dataclass
class AVSBenchClip:
    """A 5-frame evaluation clip: ``masks`` [5, H, W] bool (zeros where ``has_gt`` is False),
    ``audio`` [5, 1, 96, 64] (example t pairs with frame t)."""

    name: str
    category: str
    split: str
    frames: list[Image.Image]
    masks: np.ndarray
    has_gt: np.ndarray
    audio: Tensor


def _load_clip(files: AVSBenchFiles, v: AVSVideo, source: AudioSource) -> AVSBenchClip:
    frames = [load_rgb(files.frame(v, i), files.layout) for i in range(NUM_FRAMES)]
    has_gt = np.array(files.has_gt(v))
    w, h = frames[0].size
    masks = np.zeros((NUM_FRAMES, h, w), dtype=bool)
    for i in np.flatnonzero(has_gt):
        m = load_binary_mask(files.mask(v, i), files.layout)
        if m.shape != (h, w):
            raise MediaError(f"{files.mask(v, i)} is {m.shape[1]}x{m.shape[0]} but its frame is {w}x{h}; "
                             "re-extract the AVSBench download")
        masks[i] = m
    audio = load_audio_examples(files.audio(v, source), source, files.layout)
    return AVSBenchClip(v.name, v.category, v.split, frames, masks, has_gt, audio)


def _check_source(source: str) -> None:
    if source not in ("log_mel", "wav"):
        raise InputError(f"audio must be 'log_mel' (the shipped .pkl) or 'wav', not {source!r}")


class AVSBench(Dataset):
    """Training clips as :class:`ClipSample` (audio reference): all 5 frames, ``has_gt`` marking
    the annotated ones. No augmentation by default, as AVSBench trains; pass
    ``train_transforms(...)`` for the MUTR recipe."""

    def __init__(self, root: str | Path, subset: Subset = "s4", split: str = "train", *,
                 audio: AudioSource = "log_mel", transforms: Transform | None = None, seed: int = 0) -> None:
        _check_source(audio)
        self.files, self.audio_source, self.seed = AVSBenchFiles(root, subset, split), audio, seed
        self.transforms = transforms or plain_transforms()
        self.name = f"avsbench-{subset}"

    def __len__(self) -> int:
        return len(self.files.videos)

    def __getitem__(self, key: int | tuple[int, Seed]) -> ClipSample:
        index, seed = key if isinstance(key, tuple) else (key, [self.seed, key])
        return self.get(index, seed)

    def get(self, index: int, seed: Seed) -> ClipSample:
        v = self.files.videos[index]
        clip = _load_clip(self.files, v, self.audio_source)
        target = make_target(clip.masks, clip.has_gt, range(NUM_FRAMES))
        frames, target = self.transforms(clip.frames, target, make_rng(seed))
        return ClipSample(frames, target, audio=clip.audio, audio_mask=torch.zeros(NUM_FRAMES, dtype=torch.bool),
                          source=f"{self.name}/{v.name}")


class AVSBenchEval:
    """The clips of one split in CSV order, loaded on access (frames at their stored size)."""

    def __init__(self, root: str | Path, subset: Subset = "s4", split: str = "test", *,
                 audio: AudioSource = "log_mel") -> None:
        _check_source(audio)
        self.files, self.audio_source = AVSBenchFiles(root, subset, split), audio

    def __len__(self) -> int:
        return len(self.files.videos)

    def __getitem__(self, i: int) -> AVSBenchClip:
        return _load_clip(self.files, self.files.videos[i], self.audio_source)

    def __iter__(self) -> Iterator[AVSBenchClip]:
        return (self[i] for i in range(len(self)))
