"""The overlay's sound: the input's audio track, copied or transcoded into the overlay MP4.

AAC, MP3 and ALAC play from MP4 nearly everywhere, so they are copied packet by packet; any other
codec is decoded and encoded as AAC. The first written video frame is time 0 and the audio is cut
to the written span, so ``--start``/``--end`` stay in sync. Audio that cannot be used costs the
overlay its sound (with a warning), never the run.

A transcoded track is decoded like the prompt (:func:`mutr.io.decode.audio_frames`): damaged
packets are skipped and become silence of their duration, and ``damage`` says what was skipped
(the caller warns, once for the run). A copied track keeps its packets as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from mutr.errors import MediaError
from mutr.io.decode import Damage, audio_frames
from mutr.io.video import VideoInfo

REMUX_AUDIO_CODECS = frozenset({"aac", "mp3", "alac"})  # play from MP4 nearly everywhere

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def _aac_settings(cc) -> tuple[int, str, int]:
    """Sample rate, layout and bit rate that FFmpeg's AAC encoder accepts for this input."""
    import av

    rate = cc.sample_rate if cc.sample_rate in AAC_RATES else 48000
    channels = 1 if cc.layout is not None and cc.layout.nb_channels == 1 else 2  # more: downmix to stereo
    layout = "mono" if channels == 1 else "stereo"  # named layouts; "1 channels" (unordered) is refused
    bit_rate = min(96_000 * channels, int(6144 * channels * rate / 1024 * 0.75))  # stay under AAC's cap
    probe = av.CodecContext.create("aac", "w")  # fail here, not half-way through muxing
    probe.sample_rate, probe.layout, probe.format, probe.bit_rate = rate, layout, "fltp", bit_rate
    probe.time_base = Fraction(1, rate)
    probe.open()
    return rate, layout, bit_rate


class AudioTrack:
    """The input's default audio stream, copied or transcoded into the overlay, cut to its span.

    Output audio time = input time - (first video frame's container time + ``t0``), so audio
    stays aligned with video frames written from ``t0`` on.
    """

    def __init__(self, out, src, in_stream, out_stream, origin: float, remux: bool, name: str = "the input") -> None:
        self._src, self._in, self._out, self._origin, self.remux = src, in_stream, out_stream, origin, remux
        self._items: Iterator | None = None
        self._pending = None
        self._container = out
        self._next_sample: int | None = None
        self._resampler = None
        self._fifo = None
        self._failed = False
        self._end: float | None = None  # output time of the last video frame, once known
        self.damage = Damage()
        self.name = name

    @classmethod
    def open(cls, out, info: VideoInfo) -> AudioTrack | None:
        import av

        src = None
        try:
            src = av.open(str(info.path))
            in_stream = src.streams.best("audio") or src.streams.audio[0]
            if in_stream.codec_context is None:
                raise MediaError("no decoder for its codec")
            remux = in_stream.codec_context.codec.canonical_name in REMUX_AUDIO_CODECS
            if remux:
                out_stream = out.add_stream_from_template(in_stream)
            else:
                rate, layout, bit_rate = _aac_settings(in_stream.codec_context)
                out_stream = out.add_stream("aac", rate=rate, layout=layout)
                out_stream.bit_rate = bit_rate
        except (av.FFmpegError, OSError, MediaError, IndexError, ValueError) as e:
            if src is not None:
                src.close()
            warnings.warn(f"the overlay will have no sound: cannot use the audio of {info.path.name} ({e})", stacklevel=3)
            return None
        return cls(out, src, in_stream, out_stream, info.start_time, remux, info.path.name)

    def pump(self, t0: float, until: float) -> None:
        """Mux the audio that starts before ``until`` (seconds on the output timeline)."""
        if self._failed:
            return
        import av

        try:
            if self._items is None:
                self._items = self._packets(t0) if self.remux else self._frames(t0)
            while True:
                if self._pending is None:
                    self._pending = next(self._items, None)
                    if self._pending is None:
                        return
                start, item = self._pending
                if start >= until:
                    return
                self._pending = None
                self._mux(item)
        except av.FFmpegError as e:
            self._failed = True
            warnings.warn(f"the overlay's sound stops early: the input's audio is damaged ({e})", stacklevel=3)

    def finish(self, t0: float, until: float) -> None:
        self._end = until
        self.pump(t0, until)
        if not self.remux and not self._failed:
            self._flush_encoder(final=True)
            if self.damage.decoded_seconds == 0 and (self.damage.skipped or self.damage.broken):
                warnings.warn(f"the overlay has no sound: no packet of the audio of {self.name} decodes "
                              f"({self.damage.error or self.damage.broken})", stacklevel=3)
        self.close()

    def close(self) -> None:
        try:
            self._src.close()
        except Exception:  # noqa: BLE001
            pass

    def _mux(self, item) -> None:
        if self.remux:
            self._container.mux(item)
        else:
            self._encode(item)

    def _packets(self, t0: float):
        """(start seconds on the output timeline, packet), skipping audio before t0."""
        tb = self._in.time_base
        shift = round((self._origin + t0) / tb)
        for packet in self._src.demux(self._in):
            if packet.dts is None or packet.pts is None:
                continue
            start = float((packet.pts - shift) * tb)
            if start + float((packet.duration or 0) * tb) < -1e-6:
                continue  # entirely before the first video frame
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self._out
            yield start, packet

    def _frames(self, t0: float):
        """(start seconds, decoded audio frame trimmed to start at >= 0)."""
        import av

        end = None
        for frame in audio_frames(self._src, self._in, self.damage):
            if frame.pts is not None:
                start = float(frame.pts * frame.time_base) - self._origin - t0
            elif end is not None:  # no timestamp: it continues the previous frame
                start = end
            else:
                continue
            end = start + frame.samples / frame.sample_rate
            if end <= 0:
                continue
            if self._resampler is None:
                cc = self._out.codec_context
                self._resampler = av.AudioResampler(format="fltp", layout=cc.layout, rate=cc.sample_rate)
                self._fifo = av.AudioFifo()
            for resampled in self._resampler.resample(frame):
                yield from self._trimmed(resampled, start)
                start += resampled.samples / resampled.sample_rate
        if self._resampler is not None:
            for resampled in self._resampler.resample(None):  # what the resampler still holds
                yield from self._trimmed(resampled, None)

    def _trimmed(self, resampled, start: float | None):
        data = resampled.to_ndarray()  # [channels, samples] float32
        rate = resampled.sample_rate
        if start is None:  # continues the previous frame
            start = ((self._next_sample or 0) + self._fifo.samples) / rate
        skip = max(0, round(-start * rate))
        if skip:
            data, start = data[:, skip:], 0.0
        if self._next_sample is None:
            self._next_sample = round(max(start, 0.0) * rate)
        if data.shape[1]:
            yield start, (data, rate)

    def _encode(self, item) -> None:
        import av

        data, rate = item
        if self._end is not None:  # trim what runs past the last video frame
            keep = round(self._end * rate) - (self._next_sample + self._fifo.samples)
            data = data[:, : max(0, keep)]
        if data.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout=self._out.layout)
        frame.sample_rate = rate
        frame.pts = None
        self._fifo.write(frame)
        self._flush_encoder(final=False)

    def _flush_encoder(self, final: bool) -> None:
        size = self._out.codec_context.frame_size or 1024
        while self._fifo is not None:
            chunk = self._fifo.read(size, partial=final)
            if chunk is None:
                break
            chunk.pts = self._next_sample
            chunk.time_base = Fraction(1, chunk.sample_rate)
            self._next_sample += chunk.samples
            for packet in self._out.encode(chunk):
                self._container.mux(packet)
        if final:
            for packet in self._out.encode(None):
                self._container.mux(packet)
