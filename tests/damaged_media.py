"""A seeded corpus of damaged media: short PyAV-written clips (segment_utils.make_video) with
damage applied to the bytes of the file, the way files get damaged (cut-off recordings, bad
links, repair tools). Used by tests/io/test_audio_damage.py and tests/cli/test_segment_damage.py.

Each damage knows which audio packets it hit, so a test can compare a damaged decode with the
undamaged one outside those packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from segment_utils import make_video

# name: (file suffix, video codec, audio codec, audio rate)
PAIRS = {
    "mp4-aac": ("mp4", "libx264", "aac", 16000),
    "avi-mp3": ("avi", "libx264", "libmp3lame", 16000),
    "mkv-opus": ("mkv", "libx264", "libopus", 48000),
    "avi-ac3": ("avi", "libx264", "ac3", 48000),
    "mov-pcm": ("mov", "libx264", "pcm_s16le", 16000),
    "webm-opus": ("webm", "libvpx", "libopus", 48000),
}
DAMAGES = ("first", "middle", "last", "zeroed", "truncated", "flips")


@dataclass(frozen=True)
class Packet:
    kind: str  # "audio" or "video"
    offset: int  # where its bytes are in the file
    size: int
    start: float  # seconds on the container's clock
    end: float


@dataclass(frozen=True)
class Damaged:
    clean: Path
    path: Path
    damage: str
    hit: tuple[Packet, ...]  # audio packets whose bytes were changed (empty where unknown)
    packets: tuple[Packet, ...]  # every packet of the clean file


def packets_of(path: Path) -> list[Packet]:
    """Every packet of ``path`` with where its payload lies in the file."""
    data = path.read_bytes()
    out = []
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size == 0 or p.pts is None:
                continue
            payload = bytes(p)
            offset = data.find(payload, max(0, p.pos or 0))
            assert offset >= 0, (path, p)
            start = float(p.pts * p.time_base)
            out.append(Packet(p.stream.type, offset, p.size, start, start + float((p.duration or 0) * p.time_base)))
    return out


def make_clip(directory: Path, pair: str, seconds: float = 1.2) -> Path:
    suffix, vcodec, acodec, rate = PAIRS[pair]
    path = directory / f"{pair}.{suffix}"
    if not path.exists():
        make_video(path, n=round(seconds * 25), codec=vcodec, audio=acodec, audio_rate=rate, audio_seconds=seconds)
    return path


def damage(clean: Path, kind: str, out: Path, seed: int = 0) -> Damaged:
    """Write ``clean`` with damage ``kind`` (one of DAMAGES) to ``out``."""
    rng = np.random.default_rng(seed)
    data = bytearray(clean.read_bytes())
    packets = packets_of(clean)
    audio = [p for p in packets if p.kind == "audio"]
    hit: list[Packet] = []
    if kind in ("first", "middle", "last"):
        n = len(audio)
        hit = {"first": [audio[0]], "last": [audio[-1]], "middle": [audio[n // 4], audio[n // 2], audio[3 * n // 4]]}[kind]
        for p in hit:
            data[p.offset : p.offset + p.size] = rng.integers(0, 256, p.size, dtype=np.uint8).tobytes()
    elif kind == "zeroed":  # from a middle audio packet to the end of the next video packet
        a = audio[len(audio) // 2]
        v = next(p for p in packets if p.kind == "video" and p.offset > a.offset)
        lo, hi = a.offset, v.offset + v.size
        data[lo:hi] = bytes(hi - lo)
        hit = [p for p in audio if p.offset < hi and p.offset + p.size > lo]
    elif kind == "truncated":
        data = data[: int(len(data) * 0.6)]
        hit = [p for p in audio if p.offset + p.size > len(data)]
    elif kind == "flips":  # 12 random bytes flipped in the payloads (not the file's header)
        lo = min(p.offset for p in packets)
        for i in rng.integers(lo, len(data), 12):
            data[i] ^= 0xFF
            hit += [p for p in audio if p.offset <= i < p.offset + p.size]
    else:
        raise ValueError(kind)
    out.write_bytes(bytes(data))
    return Damaged(clean, out, kind, tuple(sorted(set(hit), key=lambda p: p.start)), tuple(packets))


@dataclass(frozen=True)
class Decoded:
    """What libavcodec yields with FFmpeg's default error handling (decode each packet, skip the
    ones that fail, stop where the demuxer fails): plain PyAV, no mutr code."""

    video_times: tuple[float, ...]  # decoded video frames, seconds on the container's clock
    audio: tuple[tuple[float, float], ...]  # decoded audio frames: (start, seconds)
    audio_skipped: int  # audio packets that failed to decode

    def audio_seconds(self, lo: float = -np.inf, hi: float = np.inf) -> float:
        """Time inside [lo, hi) that decoded audio covers (a frame decoded as garbage that
        overlaps the next ones counts once)."""
        covered, reach = 0.0, lo
        for t, d in sorted(self.audio):
            a, b = max(t, reach), min(t + d, hi)
            if b > a:
                covered += b - a
                reach = b
        return covered


def libavcodec_decode(path: Path) -> Decoded | None:
    """None when FFmpeg cannot open the file."""
    try:
        container = av.open(str(path))
    except av.FFmpegError:
        return None
    with container:
        streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
        video, audio, skipped = [], [], 0
        try:
            for packet in container.demux(streams):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    skipped += packet.stream.type == "audio"
                    continue
                for f in frames:
                    if f.pts is None:
                        continue
                    if packet.stream.type == "video":
                        video.append(float(f.pts * f.time_base))
                    else:
                        audio.append((float(f.pts * f.time_base), f.samples / f.sample_rate))
        except av.FFmpegError:
            pass
    return Decoded(tuple(sorted(video)), tuple(audio), skipped)
