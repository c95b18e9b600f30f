"""Shared by tests/test_predictor.py and tests/cli/test_segment.py: tiny checkpoints with a
word-level tokenizer, and synthetic videos of moving coloured shapes made with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch

from mutr import MUTR, MUTRConfig

WORDS = ("the red green blue square circle left right moving object a on of small big dog cat car "
         "person ball").split()


def make_tokenizer_json(path: Path) -> Path:
    """A WordLevel tokenizer: <s> 0, <pad> 1, </s> 2, <unk> 3, then WORDS; adds <s> ... </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))
    return path


def make_checkpoint(directory: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Random weights of ``preset`` saved with save_pretrained, plus tokenizer.json."""
    torch.manual_seed(seed)
    model = MUTR(MUTRConfig.preset(preset)).eval()
    model.save_pretrained(directory)
    if model.text_encoder is not None:
        make_tokenizer_json(directory / "tokenizer.json")
    return directory


def shapes_frame(i: int, w: int, h: int) -> np.ndarray:
    """A red square moving right and a blue disc moving left on a grey/green background."""
    img = np.full((h, w, 3), (90, 110 + (i * 7) % 60, 90), np.uint8)
    s = max(6, min(w, h) // 4)
    x = (i * 3) % max(1, w - s)
    img[h // 4 : h // 4 + s, x : x + s] = (230, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    cx, cy = w - 1 - (i * 2) % w, (3 * h) // 4
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (s // 2) ** 2] = (30, 30, 230)
    return img


def make_video(path: Path, *, n: int = 12, size: tuple[int, int] = (96, 64), rate: int = 25,
               codec: str = "libx264", pix_fmt: str = "yuv420p", audio: str | None = None,
               audio_seconds: float | None = None, audio_rate: int | None = None, silent: bool = False, pts: list[int] | None = None,
               time_base: Fraction | None = None, fmt: str | None = None, rotation: int | None = None,
               frame: Callable[[int, int, int], np.ndarray] = shapes_frame) -> list[np.ndarray]:
    """Write ``n`` frames ``frame(i, w, h)`` (+ an optional 440 Hz tone, ``audio_seconds`` long, at
    ``audio_rate`` Hz, default 16 kHz or Opus's 48 kHz; a display ``rotation`` tag) and return the
    RGB frames."""
    w, h = size
    frames = [frame(i, w, h) for i in range(n)]
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream(codec, rate=rate, options={"qp": "0"} if codec == "libx264" else {})
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            v.codec_context.time_base = v.time_base = time_base
        if rotation is not None:
            v.set_display_rotation(rotation)
        rate_hz = audio_rate or (48000 if audio == "libopus" else 16000)
        a = c.add_stream(audio, rate=rate_hz, layout="mono") if audio else None
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = pts[i] if pts is not None else i
            if time_base is not None:
                f.time_base = time_base
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            sr, step = a.codec_context.sample_rate, a.codec_context.frame_size or 1024
            total = round(sr * (audio_seconds if audio_seconds is not None else n / rate))
            t = np.arange(total) / sr
            tone = np.zeros(total, np.float32) if silent else (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, total, step):
                af = av.AudioFrame.from_ndarray(tone[None, k : k + step], format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, k
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return frames


def make_audio(path: Path, seconds: float, *, freq: float = 330.0) -> Path:
    """A mono tone as WAV (pcm_s16le)."""
    sr = 16000
    t = np.arange(round(sr * seconds)) / sr
    tone = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    with av.open(str(path), "w") as c:
        a = c.add_stream("pcm_s16le", rate=sr, layout="mono")
        for k in range(0, len(tone), 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k : k + 1024], format="s16", layout="mono")
            af.sample_rate, af.pts = sr, k
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return path
