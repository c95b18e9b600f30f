"""Audio prompts for windows of a streamed video: VGGish examples on one 0.96 s grid.

A sound prompt is the audio under the frames being segmented. The track is read once, in order,
as windows advance (:class:`~mutr.io.audio.AudioStream`, resampled to 16 kHz with VGGish's own
filter), and cut into the reference's non-overlapping 0.96 s examples on a grid that starts at
the first processed frame: example k covers [0.96 k, 0.96 (k + 1)) s after it.

Times: a window's span is given in video frame times (seconds since the first input frame);
``offset`` is the container time of frame time 0 on the audio's clock: ``VideoInfo.start_time``
for the video's own track, the track's start for a separate file (so its beginning lines up with
the first frame of the video).

Which examples a window gets: those whose *centre* falls in the window's time span [time of its
first frame, time of its last frame + one frame duration). That is the "examples overlapping the
window" rule made unambiguous at the edges, and it reproduces AVSBench exactly: 5 frames at
1 fps span 5 s and hold the centres of examples 0..4, the 5 examples of a 5 s clip. A window
shorter than 0.96 s that holds no centre gets the one example around its middle, so every window
has a prompt.

Audio that starts after the first frame or ends before the last is padded with silence, with a
warning; an all-silent track works (the prompt just carries no information) and warns at the end.
Damaged packets are silence of their duration (:mod:`mutr.io.decode`); ``damage`` says which, and
:meth:`finish` warns about them unless ``warn_damage`` is off (``write_outputs`` turns it off to
give one warning for the prompt and the overlay together).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from mutr.io.audio import AudioStream
from mutr.io.decode import Damage
from mutr.model.vggish import (EXAMPLE_HOP_SAMPLES, EXAMPLE_SAMPLES, NUM_BANDS, NUM_FRAMES, SAMPLE_RATE,
                               log_mel_spectrogram)

__all__ = ["EXAMPLE_SECONDS", "AudioWindows", "example_indices"]

EXAMPLE_SECONDS = EXAMPLE_HOP_SAMPLES / SAMPLE_RATE  # 0.96
_GAP_S = 0.1  # audio may end this much before the last frame without a warning (codec padding)


def example_indices(start: float, end: float) -> list[int]:
    """Example indices for the span [start, end) (seconds from the grid origin); never empty."""
    first = max(0, math.ceil(start / EXAMPLE_SECONDS - 0.5 - 1e-9))
    last = math.ceil(end / EXAMPLE_SECONDS - 0.5 - 1e-9) - 1  # centre 0.96 (k + 0.5) < end
    if last < first:
        return [max(0, int((start + end) / 2 / EXAMPLE_SECONDS))]
    return list(range(first, last + 1))


class AudioWindows:
    """Log-mel examples [N, 96, 64] for successive windows of one audio track.

    The example grid starts at the first window's start. Spans passed to :meth:`examples` must
    not move backwards (overlapping windows are fine): samples before the current window's first
    example are dropped, so memory does not grow with the video.
    """

    def __init__(self, path: str | Path, offset: float | None = None) -> None:
        self.stream = AudioStream(path, chunk_seconds=1.0, warn_damage=False)  # checks there is an audio stream
        self.warn_damage = True
        self.offset = self.stream.start_time if offset is None else float(offset)
        self.label = self.stream.name
        self.grid_start: float | None = None  # frame time of grid time 0
        self._chunks = None
        self._buf = np.zeros(0, np.float32)  # 16 kHz samples from grid sample self._buf_start on
        self._buf_start = 0
        self._ended = False
        self._warned_pad = False
        self._peak = 0.0
        self._anchored = False
        self._cache: dict[int, np.ndarray] = {}

    def examples(self, start: float, end: float) -> np.ndarray:
        """[N, 96, 64] float32 log-mel examples for the frames in [start, end) (frame times, s)."""
        if self.grid_start is None:
            self.grid_start = start
        ks = example_indices(start - self.grid_start, end - self.grid_start)
        out = np.stack([self._example(k) for k in ks])
        heard = (self._buf_start + len(self._buf)) / SAMPLE_RATE  # grid seconds of audio read so far
        if self._ended and heard < end - self.grid_start - _GAP_S and not self._warned_pad:
            self._warned_pad = True
            warnings.warn(f"the audio of {self.label} ends {heard:.2f} s after the first frame, before the video "
                          "does; the rest is padded with silence", stacklevel=2)
        keep = ks[0]
        self._cache = {k: v for k, v in self._cache.items() if k >= keep}
        drop = keep * EXAMPLE_HOP_SAMPLES - self._buf_start
        if drop > 0:
            self._buf, self._buf_start = self._buf[drop:], self._buf_start + drop
        return out

    @property
    def damage(self) -> Damage | None:
        """The damaged packets skipped so far; None before any audio was read."""
        return None if self._chunks is None else self.stream.damage

    def finish(self) -> None:
        """Warn about skipped damaged packets, and if every sample read was zero."""
        message = self.damage.audio_warning(self.label) if self.damage is not None else None
        if message and self.warn_damage:
            warnings.warn(message, stacklevel=2)
        if self._chunks is not None and self._peak == 0.0:
            warnings.warn(f"the audio of {self.label} is silent (all samples are zero), so the audio prompt "
                          "carries no information; pass another --audio FILE or use --text", stacklevel=2)

    # ------------------------------------------------------------------ internals
    def _example(self, k: int) -> np.ndarray:
        if k not in self._cache:
            lo = k * EXAMPLE_HOP_SAMPLES
            samples = self._samples(lo, lo + EXAMPLE_SAMPLES)
            mel = log_mel_spectrogram(samples)  # [96, 64]
            self._cache[k] = mel.reshape(NUM_FRAMES, NUM_BANDS).astype(np.float32)
        return self._cache[k]

    def _samples(self, lo: int, hi: int) -> np.ndarray:
        """Grid samples [lo, hi), read from the stream as needed, zeros past the end of the track."""
        while self._buf_start + len(self._buf) < hi and not self._ended:
            self._read()
        a, b = lo - self._buf_start, hi - self._buf_start
        if a < 0:
            raise RuntimeError("audio windows moved backwards")  # internal misuse, not user input
        out = self._buf[a:b]
        if len(out) < hi - lo:  # past the end of the track: silence (examples() warns if it matters)
            out = np.concatenate([out, np.zeros(hi - lo - len(out), np.float32)])
        return out

    def _read(self) -> None:
        if self._chunks is None:
            self._chunks = self.stream.chunks(start=self.offset + self.grid_start)
        with warnings.catch_warnings():  # AudioStream's silence warning: we give our own, once
            warnings.filterwarnings("ignore", message=".* is silent")
            chunk = next(self._chunks, None)
        if chunk is None:
            self._ended = True
            return
        samples = chunk.samples
        self._peak = max(self._peak, float(np.abs(samples).max(initial=0.0)))
        if not self._anchored:
            self._anchored = True
            lead = round((chunk.start_time - self.offset - self.grid_start) * SAMPLE_RATE)  # track starts after frame 0
            if lead > 0:
                samples = np.concatenate([np.zeros(lead, np.float32), samples])
                if lead > SAMPLE_RATE // 10:
                    warnings.warn(f"the audio of {self.label} starts {lead / SAMPLE_RATE:.2f} s after the first "
                                  "frame; the gap is padded with silence", stacklevel=4)
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
