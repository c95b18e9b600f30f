"""A synthetic clip as an ordinary video file with sound: the bundled demo clip, and test media.

``mutr segment`` reads real files, so the demo needs one: H.264 frames of a :class:`SyntheticClip`
and an AAC track holding the sounding objects' tones for the clip's whole duration, which is what
its audio-referred ground truth (the sounding objects' masks) assumes.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from mutr.data.synthetic import SAMPLE_RATE, SyntheticClip, make_clip
from mutr.errors import OutputExistsError
from mutr.files import atomic_write

DEMO_CLIP = {"seed": [777, 4], "num_frames": 10, "size": [160, 160], "fps": 2.0}
"""The bundled demo clip (examples/demo/clip.mp4): a seed no training run uses (they draw from
[run seed, index] and the benchmark's held-out 424242), three objects, the middle one sounding."""


def demo_clip() -> SyntheticClip:
    """The clip behind examples/demo/clip.mp4, with its exact ground truth."""
    return make_clip(DEMO_CLIP["seed"], num_frames=DEMO_CLIP["num_frames"], size=tuple(DEMO_CLIP["size"]),
                     sounding="one", absent_prob=0.0)


def write_clip_video(clip: SyntheticClip, path: str | os.PathLike, *, fps: float = 1.0,
                     overwrite: bool = False) -> Path:
    """Write ``clip`` as MP4 (H.264 4:2:0, ``fps`` frames per second) with its tones as AAC.

    Synthetic training pairs frame ``t`` with audio second ``t`` (AVSBench's one frame per
    second); at other rates the tones still cover the whole clip. Written under a temporary
    name and renamed when complete.
    """
    import av

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass overwrite=True (or --overwrite) to replace it")
    t, h, w, _ = clip.frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 4:2:0 needs even frame sizes, got {w}x{h}")
    wave = clip.waveform(t / fps)

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as out:
            video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000),
                                   options={"crf": "12", "preset": "medium"})
            video.width, video.height, video.pix_fmt = w, h, "yuv420p"
            audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            for i, image in enumerate(clip.frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = i
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            for k in range(0, len(wave), 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, k
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))

    atomic_write(path, write)
    return path
