"""Decoding that survives damaged packets, as FFmpeg's own tools do by default.

A packet that fails to decode is skipped and counted, and decoding goes on with the next one;
a container that breaks part-way (the demuxer fails) ends the stream where it broke. Video and
audio share :func:`decode_packets`; :func:`audio_frames` also keeps the audio's timeline, so
that audio stays aligned with the frames: each skipped packet becomes a silent frame of its
duration (from the timestamps around it, else the packet's duration, else the codec's frame
size, else the previous frame's length).

What was skipped is recorded in a :class:`Damage`, which the caller turns into one warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Damage", "audio_frames", "decode_packets", "format_spans"]

# Timestamps that jump further than this (or back) are a discontinuity, not lost packets: no
# silence, no cut (a stream whose clock restarts or wraps must not become hours of silence).
MAX_FILL_S = 30.0


@dataclass
class Damage:
    """What a tolerant decode of one stream skipped.

    ``spans``: per skipped packet, its [start, end) in seconds on the container's clock (None
    where the packet had no timestamp); ``error``: the last decoder error; ``broken``: the
    demuxer's error when the file broke part-way (the rest of the stream was not read);
    ``decoded_seconds``: how much decoded (audio only).
    """

    spans: list[tuple[float | None, float | None]] = field(default_factory=list)
    error: str | None = None
    broken: str | None = None
    decoded_seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return len(self.spans)

    @property
    def skipped_seconds(self) -> float:
        return sum(b - a for a, b in self.spans if a is not None and b is not None)

    def merge(self, other: Damage | None) -> Damage:
        """Both decodes' packets, each once (two readers of the same track see the same packets)."""
        if other is None:
            return self
        spans = sorted(set(self.spans) | set(other.spans), key=lambda s: (s[0] is None, s[0] or 0.0))
        return Damage(spans, self.error or other.error, self.broken or other.broken,
                      max(self.decoded_seconds, other.decoded_seconds))

    @property
    def mostly_missing(self) -> bool:
        """More than half of the time read was skipped."""
        return self.skipped_seconds > self.decoded_seconds

    def to_dict(self) -> dict:
        return {"skipped_packets": self.skipped, "skipped_seconds": round(self.skipped_seconds, 3),
                "skipped_spans": [[_r(a), _r(b)] for a, b in self.spans], "broken": self.broken}

    def audio_warning(self, name: str) -> str | None:
        """The one warning for a damaged audio track, or None when nothing was skipped."""
        if not self.skipped and self.broken is None:
            return None
        parts = []
        if self.skipped:
            parts.append(f"skipped {self.skipped} damaged audio packet{'s' * (self.skipped != 1)} of {name} "
                         f"({format_spans(self.spans)}; {self.skipped_seconds:.3f} s in all) as FFmpeg does; "
                         f"they become silence of the same duration (decoder: {self.error})")
        if self.broken is not None:
            parts.append(f"the audio of {name} breaks off after {self.decoded_seconds:.2f} s ({self.broken})")
        text = "; ".join(parts)
        if self.mostly_missing:
            return text + "; more than half of the sound is missing, so a sound prompt from it is unreliable: " \
                          "use --text, or an undamaged copy of the file"
        return text + "; an undamaged copy of the file gives the full sound"


def _r(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def format_spans(spans: list[tuple[float | None, float | None]], limit: int = 4) -> str:
    """"0.00 to 0.06 s, 1.02 to 1.09 s" with runs of adjacent packets joined; the first ``limit`` runs."""
    runs: list[list[float]] = []
    for a, b in spans:
        if a is None or b is None:
            continue
        if runs and a <= runs[-1][1] + 1e-3:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    text = ", ".join(f"{a:.2f} to {b:.2f} s" for a, b in runs[:limit])
    unknown = sum(a is None or b is None for a, b in spans)
    more = [f"{len(runs) - limit} more"] if len(runs) > limit else []
    more += [f"{unknown} without timestamps"] if unknown else []
    return ", ".join([text] * bool(text) + more)


def decode_packets(container, stream, damage: Damage) -> Iterator:
    """Decoded frames of ``stream``; skips packets that fail to decode and stops where the file
    breaks, recording both in ``damage``."""
    import av

    demux = container.demux(stream)
    tb = stream.time_base
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except (av.FFmpegError, OSError) as e:
            damage.broken = getattr(e, "strerror", None) or str(e)
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            damage.error = e.strerror or str(e)
            start = packet.pts if packet.pts is not None else packet.dts
            if start is None or tb is None:
                damage.spans.append((None, None))
            else:
                length = packet.duration or 0
                damage.spans.append((float(start * tb), float((start + length) * tb) if length else None))
            continue
        yield from frames
    if damage.broken is not None:
        try:  # the demuxer's flush packet never came: flush what the decoder still holds
            yield from stream.codec_context.decode(None)
        except av.FFmpegError:
            pass


def audio_frames(container, stream, damage: Damage) -> Iterator:
    """Decoded audio frames of ``stream`` on the stream's timeline: sample k of the output is at
    first-frame time + k / rate.

    Each run of skipped packets becomes a silent frame that reaches the next frame's timestamp.
    A frame that holds more samples than the time to the next frame's timestamp (a damaged packet
    that decodes to garbage of another length) is cut there, and a timestamp jump with no skipped
    packet (a packet the demuxer lost) is filled with silence; differences under half a frame are
    left alone, so undamaged streams decode exactly as before. One frame is held back to know
    where it must end.
    """
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else None
    held, held_time = None, None  # the previous frame, not yet yielded, and its start (s)
    seen = 0  # spans already accounted for
    for frame in decode_packets(container, stream, damage):
        new, seen = damage.spans[seen:], damage.skipped
        time = _time(frame)
        rate = frame.sample_rate
        if held is None:  # the first frame: packets skipped before it start the timeline
            start = new[0][0] if new else None
            if start is not None and origin is not None:
                start = max(start, origin)  # the decoder drops what lies before the stream's start
            n = round((time - start) * rate) if new and time is not None and start is not None else None
            if new and (n is None or n > MAX_FILL_S * rate):
                n = _lengths(new, stream, rate, frame)
            if n is not None and n > 0:
                _fill_spans(damage, len(new), start, n / rate)
                yield _silence(frame, n, start, tb)
        else:
            end = held_time + held.samples / held.sample_rate if held_time is not None else None
            if time is not None and held_time is not None:
                n = round((time - held_time) * held.sample_rate)  # samples the held frame may span
                jump = n - held.samples
                if 0 < n and (new or abs(jump) * 2 > held.samples) and jump <= MAX_FILL_S * held.sample_rate:
                    if n < held.samples:
                        held = _cut(held, n)
                    yield held
                    if n > held.samples:
                        _fill_spans(damage, len(new), end, (n - held.samples) / rate)
                        yield _silence(held, n - held.samples, end, tb)
                    held = None
            if held is not None:
                yield held
                if new:
                    n = _lengths(new, stream, rate, frame)
                    _fill_spans(damage, len(new), end, n / rate)
                    yield _silence(frame, n, end, tb)
                    time = time if time is not None else (end + n / rate if end is not None else None)
            if time is None and end is not None:
                time = end
        held, held_time = frame, time
        damage.decoded_seconds += frame.samples / rate
    if held is not None:
        yield held
        new = damage.spans[seen:]
        if new:  # the last packets: no frame after them
            end = held_time + held.samples / held.sample_rate if held_time is not None else None
            n = _lengths(new, stream, held.sample_rate, held)
            _fill_spans(damage, len(new), end, n / held.sample_rate)
            yield _silence(held, n, end, tb)


def _time(frame) -> float | None:
    return float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base is not None else None


def _cut(frame, samples: int):
    """The first ``samples`` samples of ``frame``."""
    import av

    data = frame.to_ndarray()  # planar [C, S]; packed [1, S * C]
    data = data[:, :samples] if frame.format.is_planar else data[:, : samples * frame.layout.nb_channels]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
    return out


def _lengths(spans, stream, rate: int, like) -> int:
    """Samples the skipped packets held: their durations, else the codec's frame size, else the
    length of a neighbouring frame."""
    per = stream.codec_context.frame_size or like.samples
    return sum(round((b - a) * rate) if a is not None and b is not None else per for a, b in spans)


def _fill_spans(damage: Damage, count: int, start: float | None, seconds: float) -> None:
    """Make the last ``count`` spans cover the silence put in their place: spread them over it when
    a packet lacked a timestamp, else stretch the last one to its end (a demuxer's parser may have
    merged a damaged packet with the next, so one failure can cost two packets' time)."""
    if not count or start is None:  # (count 0: a timestamp jump with no skipped packet)
        return
    spans = damage.spans[-count:]
    if any(a is None or b is None for a, b in spans):
        damage.spans[-count:] = [(start + seconds * i / count, start + seconds * (i + 1) / count) for i in range(count)]
    elif start + seconds > spans[-1][1] + 1e-6:
        damage.spans[-1] = (spans[-1][0], start + seconds)


def _silence(like, samples: int, start: float | None, tb):
    """A frame of ``samples`` zeros in the format and layout of ``like``."""
    import av

    frame = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
    zero = b"\x80" if like.format.name in ("u8", "u8p") else b"\x00"  # unsigned 8-bit silence is 128
    for plane in frame.planes:
        plane.update(zero * plane.buffer_size)
    frame.sample_rate = like.sample_rate
    if start is not None and tb is not None:
        frame.time_base = tb
        frame.pts = round(start / tb)
    return frame
