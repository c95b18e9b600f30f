"""mutr.io.audio: decode, mono mixing, 16 kHz resampling, timestamps, streaming, errors.

Media files are written with PyAV into tmp dirs; a format whose encoder this FFmpeg build lacks
is skipped.
"""

from __future__ import annotations

import fractions
import warnings

import numpy as np
import pytest

av = pytest.importorskip("av")

from mutr.errors import InputError, MediaError  # noqa: E402
from mutr.io.audio import AudioStream, load_audio  # noqa: E402
from mutr.io.resample import resample_kaiser_best  # noqa: E402

CLICK_AT = 0.6  # s


def write_media(path, signal: np.ndarray, rate: int, codec: str, *, fmt: str | None = None,
                video: str | None = None, start: float = 0.0, sample_format: str = "fltp") -> None:
    """signal [C, N] in [-1, 1] → an audio stream starting at ``start`` s (+ a video stream)."""
    try:
        av.codec.Codec(codec, "w")
        if video:
            av.codec.Codec(video, "w")
    except Exception:
        pytest.skip(f"this FFmpeg build has no {codec}/{video} encoder")
    layout = "mono" if signal.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as container:
        vs = container.add_stream(video, rate=10) if video else None
        options = {"strict": "experimental"} if codec == "vorbis" else {}
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.layout = layout
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
            for i in range(int(signal.shape[1] / rate * 10)):
                img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 9 * i % 255, np.uint8), format="rgb24")
                img.pts = i
                container.mux(vs.encode(img))
            container.mux(vs.encode(None))
        step = 4096
        for i in range(0, signal.shape[1], step):
            block = signal[:, i : i + step]
            if sample_format == "s16":  # packed [1, N * C]
                block = np.round(block * 32767).astype(np.int16).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=block.dtype if
                                               sample_format == "s16" else np.float32),
                                               format=sample_format, layout=layout)
            frame.sample_rate, frame.time_base = rate, fractions.Fraction(1, rate)
            frame.pts = round(start * rate) + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def click_signal(rate: int, seconds: float = 1.5, channels: int = 2) -> np.ndarray:
    """[C, N]: a quiet 440 Hz tone with a 10 ms, 2 kHz burst at CLICK_AT s in every channel."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.05 * np.sin(2 * np.pi * 440 * t)
    burst = (t >= CLICK_AT) & (t < CLICK_AT + 0.01)
    x[burst] += 0.8 * np.sin(2 * np.pi * 2000 * (t[burst] - CLICK_AT))
    return np.stack([x] * channels)


def onset(samples: np.ndarray, rate: int, start_time: float) -> float:
    return start_time + int(np.argmax(np.abs(samples) > 0.3)) / rate


FORMATS = [  # suffix, container, codec, rate, video codec, timing tolerance (s)
    ("mp4", "mp4", "aac", 44100, "mpeg4", 0.002),
    ("mkv", "matroska", "libopus", 48000, "mpeg4", 0.002),
    ("webm", "webm", "vorbis", 44100, None, 0.002),
    ("avi", "avi", "libmp3lame", 44100, "mpeg4", 0.03),  # AVI does not record the MP3 encoder delay
    ("wav", "wav", "pcm_s16le", 22050, None, 0.001),
    ("flac", "flac", "flac", 32000, None, 0.001),
    ("m4a", "ipod", "aac", 48000, None, 0.002),
]


@pytest.mark.parametrize("suffix,fmt,codec,rate,video,tol", FORMATS, ids=[f[0] for f in FORMATS])
def test_decodes_every_container(tmp_path, suffix, fmt, codec, rate, video, tol):
    path = tmp_path / f"clip.{suffix}"
    write_media(path, click_signal(rate), rate, codec, fmt=fmt, video=video)
    x, sr, t0 = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1 and sr == 16000
    assert np.abs(x).max() <= 1.0
    assert abs(len(x) / sr - 1.5) < 0.1
    assert abs(onset(x, sr, t0) - CLICK_AT) < tol
    span, _, s0 = load_audio(path, 0.5, 0.8)  # a span lands on the same clock
    assert len(span) == round(0.3 * sr) and abs(s0 - 0.5) < 1 / sr
    assert abs(onset(span, sr, s0) - CLICK_AT) < tol


def test_stereo_is_averaged_exactly(tmp_path):
    rate, n = 16000, 20000
    rng = np.random.default_rng(0)
    sig = np.stack([0.5 * np.sin(2 * np.pi * 300 * np.arange(n) / rate), 0.3 * (2 * rng.random(n) - 1)])
    path = tmp_path / "stereo.wav"
    write_media(path, sig, rate, "pcm_s16le", sample_format="s16")
    ints = np.round(sig * 32767).astype(np.int16)
    x, sr, _ = load_audio(path)
    np.testing.assert_array_equal(x, (ints / 32768.0).mean(axis=0).astype(np.float32))


def test_resampling_matches_kaiser_best_and_native_rate(tmp_path):
    rate = 44100
    sig = click_signal(rate, channels=1)
    path = tmp_path / "a.wav"
    write_media(path, sig, rate, "pcm_s16le", sample_format="s16")
    native, nsr, _ = load_audio(path, sample_rate=None)
    assert nsr == rate and len(native) == sig.shape[1]
    x, sr, _ = load_audio(path)  # streamed in blocks, must equal resampling the whole signal once
    ref = resample_kaiser_best(native.astype(np.float64), rate, 16000).astype(np.float32)
    assert len(x) == len(ref)
    np.testing.assert_allclose(x, ref, atol=1e-6)
    tone = x[: int(0.5 * sr)]  # before the click: pure 440 Hz
    freqs = np.fft.rfftfreq(len(tone), 1 / sr)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(tone)))] - 440) < 3


def test_start_time_of_a_late_stream(tmp_path):
    path = tmp_path / "late.mkv"
    write_media(path, click_signal(16000, channels=1), 16000, "flac", fmt="matroska", start=0.5)
    stream = AudioStream(path)
    assert stream.start_time == pytest.approx(0.5)
    x, sr, t0 = load_audio(path)
    assert t0 == pytest.approx(0.5) and onset(x, sr, t0) == pytest.approx(0.5 + CLICK_AT, abs=1e-3)
    y, _, t1 = load_audio(path, 0.0, 1.0)  # no padding before the stream starts
    assert t1 == pytest.approx(0.5) and len(y) == round(0.5 * sr)


def test_video_without_audio_names_the_fix(tmp_path):
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as container:
        vs = container.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
    with pytest.raises(MediaError, match=r"^silent_film\.mp4 has no audio stream; pass --audio FILE or --text$"):
        load_audio(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="junk.mp4"):
        load_audio(junk)


def test_silence_decodes_with_a_warning(tmp_path):
    path = tmp_path / "quiet.flac"
    write_media(path, np.zeros((1, 16000)), 16000, "flac")
    with pytest.warns(UserWarning, match="silent"):
        x, _, _ = load_audio(path)
    assert len(x) == 16000 and not x.any()


def test_spans_and_chunks(tmp_path):
    path = tmp_path / "a.flac"
    write_media(path, click_signal(48000), 48000, "flac")
    stream = AudioStream(path, chunk_seconds=0.25)
    whole = stream.read()
    chunks = list(stream.chunks())
    assert [len(c.samples) for c in chunks[:-1]] == [4000] * (len(chunks) - 1)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_time == pytest.approx(a.end_time)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), whole.samples)
    assert len(stream.read(0.3, 1.3).samples) == 16000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(stream.read(5.0, 6.0).samples) == 0  # past the end: empty, no warning
    with pytest.raises(InputError, match="before start"):
        stream.read(1.0, 0.5)


def test_first_window_of_a_long_file_decodes_a_bounded_amount(tmp_path):
    rate, seconds = 8000, 300
    sig = np.zeros((1, rate * seconds))
    sig[0, 200 * rate : 200 * rate + 40] = 0.9  # a click at 200 s
    path = tmp_path / "long.wav"
    write_media(path, sig, rate, "pcm_s16le", sample_format="s16")
    stream = AudioStream(path)
    with pytest.warns(UserWarning, match="silent"):
        first = stream.read(0.0, 1.0)
    assert len(first.samples) == 16000 and stream.decoded_samples <= 2 * rate
    stream.decoded_samples = 0
    mid = stream.read(199.5, 200.5)  # seeks: decodes ~the span plus the 1 s pre-roll margin
    assert stream.decoded_samples <= 3 * rate
    assert onset(mid.samples, 16000, mid.start_time) == pytest.approx(200.0, abs=1e-3)


@pytest.mark.parametrize("rate", [44100, 16000])
def test_a_seeked_span_equals_the_same_span_of_a_full_decode(tmp_path, rate):
    rng = np.random.default_rng(1)
    path = tmp_path / "noise.flac"
    write_media(path, 0.5 * (2 * rng.random((1, 4 * rate)) - 1), rate, "flac")
    stream = AudioStream(path)
    whole = stream.read()
    stream.decoded_samples = 0
    span = stream.read(2.5, 3.0)
    assert stream.decoded_samples < 2 * rate  # it did seek
    assert span.start_time == 2.5
    np.testing.assert_allclose(span.samples, whole.samples[40000:48000], rtol=0, atol=1e-7)
