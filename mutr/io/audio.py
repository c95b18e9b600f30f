"""Audio track of any media file → mono float32 samples, streamed, with container timestamps.

Audio prompts come from a separate file or from the video itself, and a long video must not be
decoded whole to build its first window: :class:`AudioStream` seeks to a time span and yields
chunks. Samples are mixed to mono by averaging the channels and resampled with resampy's
``kaiser_best`` filter (:mod:`mutr.io.resample`), which is exactly what VGGish's reference
front end does to a WAV file, so features match the reference for any source rate.

Times are seconds on the container's clock, so audio and frames line up by timestamp, also when
a stream starts late or a file was cut. :mod:`mutr.io.video` counts ``Frame.time`` from the first
frame instead; the audio under a frame is at ``info.start_time + frame.time`` on this clock.
Only the first audio stream is read.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mutr.errors import InputError, MediaError
from mutr.io.decode import Damage, audio_frames
from mutr.io.resample import KaiserResampler

TARGET_SAMPLE_RATE = 16000  # what VGGish expects
_SEEK_MARGIN_S = 1.0  # decode this much before a seek target: codec pre-roll, keyframe-less seeks
_RESAMPLE_BLOCK_S = 0.25  # resample in blocks of at least this much input (BLAS efficiency)


@dataclass(frozen=True)
class AudioChunk:
    """``samples`` [S] float32 mono, nominally in [-1, 1] (lossy codecs and resampling may
    overshoot a little; not clipped, as the reference does not clip); ``start_time`` (s) is the
    time of samples[0]."""

    samples: np.ndarray
    start_time: float
    sample_rate: int

    @property
    def end_time(self) -> float:
        return self.start_time + len(self.samples) / self.sample_rate


def _to_mono(frame) -> np.ndarray:
    """One decoded frame → mono float64, scaled like soundfile/the reference (int16 / 32768)."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: [1, S * C] interleaved
        data = data.reshape(-1, channels).T
    if data.dtype == np.uint8:
        data = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        data = data / float(2 ** (8 * data.dtype.itemsize - 1))
    return np.asarray(data, dtype=np.float64).mean(axis=0)


class AudioStream:
    """The audio track of ``path``, read lazily: ``chunks(start, end)`` seeks and yields.

    ``sample_rate=None`` keeps the source rate (mono mixing still applies). Each call to
    :meth:`chunks` opens its own decoder, so several spans can be read independently.
    ``decoded_samples`` counts source samples decoded so far (a cost measure).

    Damaged packets are skipped as FFmpeg does and become silence of their duration
    (:mod:`mutr.io.decode`); ``damage`` holds what the last read skipped, and that read warns
    once at its end unless ``warn_damage=False`` (a caller that reports it itself).
    """

    def __init__(self, path: str | os.PathLike, *, sample_rate: int | None = TARGET_SAMPLE_RATE,
                 chunk_seconds: float = 1.0, warn_damage: bool = True) -> None:
        self.path = Path(path)
        self.warn_damage = warn_damage
        self.damage = Damage()
        self.name = self.path.name
        if chunk_seconds <= 0:
            raise InputError(f"chunk_seconds must be > 0, got {chunk_seconds}")
        with self._open() as container:
            stream = container.streams.audio[0]
            self.source_sample_rate = int(stream.rate)
            self.channels = int(stream.channels)
            tb = stream.time_base
            if stream.start_time is not None:
                self.start_time = float(stream.start_time * tb)
            elif container.start_time is not None:
                self.start_time = container.start_time / 1e6
            else:
                self.start_time = 0.0
            if stream.duration is not None:
                self.duration: float | None = float(stream.duration * tb)
            else:
                self.duration = container.duration / 1e6 if container.duration else None
        self.sample_rate = int(sample_rate or self.source_sample_rate)
        self.chunk_samples = max(1, round(chunk_seconds * self.sample_rate))
        self.decoded_samples = 0

    def _open(self):
        import av

        if not self.path.exists():
            raise MediaError(f"{self.path} does not exist; check the path")
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot open {self.name} ({e}); pass a media file FFmpeg can decode") from e
        if not container.streams.audio:
            container.close()
            raise MediaError(f"{self.name} has no audio stream; pass --audio FILE or --text")
        return container

    def read(self, start: float | None = None, end: float | None = None) -> AudioChunk:
        """All samples in [start, end) (the whole track by default) as one chunk."""
        parts = list(self.chunks(start, end))
        t0 = parts[0].start_time if parts else (start if start is not None else self.start_time)
        samples = np.concatenate([p.samples for p in parts]) if parts else np.zeros(0, np.float32)
        return AudioChunk(samples, t0, self.sample_rate)

    def __iter__(self) -> Iterator[AudioChunk]:
        return self.chunks()

    def chunks(self, start: float | None = None, end: float | None = None) -> Iterator[AudioChunk]:
        """Yield consecutive chunks of ``chunk_seconds`` covering [start, end).

        The first sample is the one nearest ``start`` (no padding before the track begins);
        a span of d seconds gives ``round(d * sample_rate)`` samples unless the track ends first.
        Warns once at the end if every sample was zero.
        """
        if start is not None and end is not None and end < start:
            raise InputError(f"end ({end} s) is before start ({start} s); pass end >= start")
        peak, total = 0.0, 0
        self.damage = damage = Damage()
        for chunk in self._decode(start, end, damage):
            peak = max(peak, float(np.abs(chunk.samples).max(initial=0.0)))
            total += len(chunk.samples)
            yield chunk
        message = damage.audio_warning(self.name)
        if self.warn_damage and message:
            warnings.warn(message, stacklevel=2)
        if total and peak == 0.0:
            where = "" if start is None and end is None else \
                f" from {start or 0:g} s to {'the end' if end is None else f'{end:g} s'}"
            warnings.warn(f"the audio of {self.name}{where} is silent (all samples are zero), so an audio "
                          "prompt carries no information; pass another --audio FILE or use --text", stacklevel=2)

    def _decode(self, start: float | None, end: float | None, damage: Damage) -> Iterator[AudioChunk]:
        container = self._open()
        try:
            if start is not None and start - _SEEK_MARGIN_S > self.start_time:
                container = self._seek(container, start - _SEEK_MARGIN_S)
            resampler = KaiserResampler(self.source_sample_rate, self.sample_rate)
            span: _Span | None = None
            pending: list[np.ndarray] = []
            for frame in self._frames(container, damage):
                mono = _to_mono(frame)
                if span is None:  # the first decoded sample anchors the output timeline ...
                    anchor = float(frame.time) if frame.time is not None else self.start_time
                    # ... moved to the start of a resampling period (Q input samples) counted from
                    # the stream start, so a seeked span equals the same span of a full decode
                    first = round((anchor - self.start_time) * self.source_sample_rate)
                    skip = -first % resampler.period_in
                    mono, anchor = mono[skip:], anchor + skip / self.source_sample_rate
                    span = _Span(anchor, start, end, self.sample_rate, self.chunk_samples)
                pending.append(mono)
                self.decoded_samples += frame.samples
                if sum(map(len, pending)) >= _RESAMPLE_BLOCK_S * self.source_sample_rate:
                    yield from span.feed(resampler.push(np.concatenate(pending)))
                    pending = []
                    if span.done:
                        return
            if span is not None:
                yield from span.feed(resampler.push(np.concatenate(pending) if pending else np.zeros(0)))
                yield from span.feed(resampler.flush(), final=True)
        finally:
            container.close()

    def _seek(self, container, target: float):
        import av

        stream = container.streams.audio[0]
        offset = int(target / stream.time_base)
        try:  # some demuxers land after the target: check the first frame, then seek again
            container.seek(offset, stream=stream, backward=True)
            frame = next(iter(self._frames(container, Damage())), None)
            if frame is not None and (frame.time is None or frame.time <= target + _SEEK_MARGIN_S / 2):
                container.seek(offset, stream=stream, backward=True)
                return container
        except (av.error.FFmpegError, MediaError):  # unseekable input, or nothing decodes after the target
            pass
        container.close()  # decode from the beginning instead
        return self._open()

    def _frames(self, container, damage: Damage) -> Iterator:
        """Decoded frames, damaged packets as silence; an error only when nothing decodes."""
        yield from audio_frames(container, container.streams.audio[0], damage)
        if damage.decoded_seconds == 0 and (damage.skipped or damage.broken):
            raise MediaError(f"cannot decode the audio of {self.name} after 0.00 s of decoding "
                             f"({damage.error or damage.broken}); re-encode it, e.g. ffmpeg -i IN -c:a flac OUT.flac")


class _Span:
    """Cuts the output timeline (sample 0 = ``anchor`` s) to [start, end) and into chunks."""

    def __init__(self, anchor: float, start: float | None, end: float | None, rate: int, chunk: int):
        t0 = anchor if start is None else max(start, anchor)
        self.first = round((t0 - anchor) * rate)  # first kept output sample
        self.last = None if end is None else self.first + max(0, round((end - t0) * rate))
        self.anchor, self.rate, self.chunk = anchor, rate, chunk
        self.seen = 0  # output samples received
        self.yielded = 0  # output samples yielded
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    @property
    def done(self) -> bool:
        return self.last is not None and self.seen >= self.last

    def feed(self, y: np.ndarray, final: bool = False) -> Iterator[AudioChunk]:
        lo = max(self.first - self.seen, 0)
        hi = len(y) if self.last is None else min(self.last - self.seen, len(y))
        self.seen += len(y)
        if hi > lo:
            self.buf.append(y[lo:hi].astype(np.float32))
            self.buffered += hi - lo
        final = final or self.done
        while self.buffered >= self.chunk or (final and self.buffered):
            data = np.concatenate(self.buf)
            n = min(self.chunk, len(data))
            yield AudioChunk(data[:n], self.anchor + (self.first + self.yielded) / self.rate, self.rate)
            self.yielded += n
            self.buf, self.buffered = [data[n:]], len(data) - n


def load_audio(path: str | os.PathLike, start: float | None = None, end: float | None = None, *,
               sample_rate: int | None = TARGET_SAMPLE_RATE) -> tuple[np.ndarray, int, float]:
    """Decode [start, end) of the audio track: (samples [S] float32 mono, sample_rate, start_time).

    ``start_time`` is the container time (s) of samples[0], for aligning with video frames.
    Only the requested span (plus ~1 s of codec pre-roll) is decoded.
    """
    chunk = AudioStream(path, sample_rate=sample_rate, chunk_seconds=3600.0).read(start, end)
    return chunk.samples, chunk.sample_rate, chunk.start_time
