"""Damaged audio packets: skipped as FFmpeg does, silence of their duration, timeline kept.

The clips and their damage come from tests/damaged_media.py (seeded, written with PyAV here).
Expected values come from decoding the same clip before it was damaged: outside the damaged
packets the prompt's samples must be those of the undamaged clip.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from damaged_media import PAIRS, damage, make_clip, packets_of

from mutr.errors import MediaError
from mutr.io.audio import AudioStream

# What a damaged packet costs besides its own time, in libavcodec itself (measured on this corpus
# by decoding each clip with and without its damage; plain PyAV shows the same):
# * before it: the demuxer's parser may merge it with the packet before (AC-3 and MP3 in AVI),
#   so one more packet fails: the span starts one packet earlier;
# * after it, until the decoder has recovered: AAC overlaps one frame (64 ms at 16 kHz); MP3 at
#   16 kHz mono borrows bits from earlier frames (bit reservoir: <= 0.21 s here); Opus's
#   prediction settles in <= 0.34 s after a packet decoded as garbage; AC-3 one frame (32 ms);
# * AC-3 dithers zero-bit mantissas from a generator that advances per decoded frame, so after a
#   lost frame the rest differs by dither noise (<= 4e-4): compared to 1e-3 instead of 1e-5.
RECOVERY = {"aac": 0.07, "libmp3lame": 0.25, "libopus": 0.35, "ac3": 0.04, "pcm_s16le": 0.0}
TOLERANCE = {"ac3": 1e-3}
FILTER_S = 0.004  # kaiser_best reaches 50 zero crossings of 16 kHz (3.1 ms) each side of a sample
# Matroska/WebM store times in ms: where a damaged packet decodes to garbage of another length,
# the timeline after it is only known to the ms (16 samples at 16 kHz).
TICK = {"mkv": 16, "webm": 16}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("damage")
    return d, {pair: make_clip(d, pair) for pair in PAIRS}


def _read(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunk = AudioStream(path, **kw).read()
    return chunk, [str(w.message) for w in caught]


def _good_runs(n: int, rate: int, t0: float, spans: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Sample ranges outside ``spans`` (seconds)."""
    ok = np.ones(n, bool)
    for a, b in spans:
        ok[max(0, int((a - t0) * rate)) : max(0, int(np.ceil((b - t0) * rate)))] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("kind", ["first", "middle", "last", "zeroed"])
@pytest.mark.parametrize("pair", list(PAIRS))
def test_prompt_samples_equal_an_undamaged_decode_outside_the_damage(clips, pair, kind):
    d, clean = clips
    bad = damage(clean[pair], kind, d / f"{pair}-{kind}{clean[pair].suffix}")
    codec, suffix = PAIRS[pair][2], PAIRS[pair][0]
    ref, _ = _read(clean[pair])
    got, _ = _read(bad.path)
    assert got.start_time == ref.start_time and got.sample_rate == ref.sample_rate == 16000
    spans = [(2 * p.start - p.end - FILTER_S, p.end + RECOVERY[codec] + FILTER_S) for p in bad.hit]
    n = min(len(ref.samples), len(got.samples))
    if kind != "zeroed":  # a zeroed block may also cost the container the rest (Matroska: a cluster)
        assert len(got.samples) >= len(ref.samples) - round(16000 * (bad.hit[-1].end - bad.hit[-1].start))
    tick = TICK.get(suffix, 0)
    for lo, hi in _good_runs(n, 16000, ref.start_time, spans):
        lo2, hi2 = lo + tick, hi - tick  # room to look for a shift of up to one timestamp tick
        if hi2 - lo2 < 160:
            continue
        errors = [np.abs(got.samples[lo2 + s : hi2 + s] - ref.samples[lo2:hi2]).max() for s in range(-tick, tick + 1)]
        assert min(errors) < TOLERANCE.get(codec, 1e-5), (pair, kind, lo / 16000, hi / 16000, min(errors))


def test_a_skipped_packet_is_silence_of_exactly_its_duration(clips):
    d, clean = clips
    bad = damage(clean["mp4-aac"], "middle", d / "aac-middle.mp4")
    ref, _ = _read(clean["mp4-aac"], sample_rate=None)  # AAC at its own 16 kHz: no resampling
    got, messages = _read(bad.path, sample_rate=None)
    assert len(got.samples) == len(ref.samples)  # every packet's time is kept
    for p in bad.hit:  # AAC in MP4: 1024 samples per packet, timestamps in samples
        lo, hi = round((p.start - got.start_time) * 16000), round((p.end - got.start_time) * 16000)
        assert hi - lo == 1024
        assert not got.samples[lo:hi].any()  # the packet's span: silence, exactly ...
        assert got.samples[lo - 1] != 0 and got.samples[hi] != 0  # ... and no more
        np.testing.assert_array_equal(got.samples[lo - 1024 : lo], ref.samples[lo - 1024 : lo])  # sound before
    [message] = messages
    assert message.startswith(f"skipped 3 damaged audio packets of {bad.path.name} (0.26 to 0.32 s, ")
    assert "0.192 s in all" in message and "unreliable" not in message  # 3 x 64 ms


def test_seeking_with_damage_before_inside_and_after_the_span(tmp_path):
    from segment_utils import make_video

    path = tmp_path / "long.mp4"
    make_video(path, n=10, audio="aac", audio_seconds=4.0)
    audio = [p for p in packets_of(path) if p.kind == "audio"]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    hit = [next(p for p in audio if p.start >= t) for t in (0.5, 2.2, 3.5)]  # before, inside, after [2.0, 3.0)
    for p in hit:
        data[p.offset : p.offset + p.size] = rng.integers(0, 256, p.size, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    stream = AudioStream(bad, warn_damage=False)
    whole = stream.read()
    assert stream.damage.skipped == 3
    stream.decoded_samples = 0
    span = stream.read(2.0, 3.0)
    assert stream.decoded_samples < 2.5 * 16000  # it did seek: the packet at 0.5 s was not read
    assert stream.damage.skipped == 1 and stream.damage.spans[0][0] == pytest.approx(hit[1].start)
    assert span.start_time == 2.0 and len(span.samples) == 16000
    np.testing.assert_allclose(span.samples, whole.samples[32000:48000], rtol=0, atol=1e-6)
    lo = round((hit[1].start - 2.0) * 16000)
    assert not span.samples[lo + 64 : lo + 1024 - 64].any()  # the damaged packet inside: silence


def test_mostly_damaged_warns_and_nothing_decodable_is_the_one_line_error(clips):
    d, clean = clips
    path = clean["mp4-aac"]
    audio = [p for p in packets_of(path) if p.kind == "audio"]
    data = bytearray(path.read_bytes())
    for p in audio[: int(0.7 * len(audio))]:
        data[p.offset : p.offset + p.size] = bytes([0xFF]) * p.size
    mostly = d / "mostly.mp4"
    mostly.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="more than half of the sound is missing, so a sound prompt from it is unreliable"):
        x = AudioStream(mostly).read()
    assert len(x.samples) == len(AudioStream(path).read().samples)  # still the whole timeline
    for p in audio:
        data[p.offset : p.offset + p.size] = bytes([0xFF]) * p.size
    nothing = d / "nothing.mp4"
    nothing.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"^cannot decode the audio of nothing\.mp4 after 0\.00 s of decoding \(.*\); "
                                         r"re-encode it, e\.g\. ffmpeg -i IN -c:a flac OUT\.flac$"):
        AudioStream(nothing).read()


@pytest.mark.parametrize("frame_size,expected_gap", [(1152, 1152), (0, 1024)])
def test_without_timestamps_a_skipped_packet_lasts_the_codec_frame_size(frame_size, expected_gap):
    """Packets and frames with no timestamps (and no duration): the gap is the codec's frame size,
    else the length of the frame before it. Fake demuxer packets around real PyAV frames."""
    import errno
    from types import SimpleNamespace

    import av

    from mutr.io.decode import Damage, audio_frames

    def frame(value):
        f = av.AudioFrame.from_ndarray(np.full((1, 1024), value, np.float32), format="fltp", layout="mono")
        f.sample_rate = 16000
        return f

    def packet(value):
        def decode():
            if value is None:
                raise av.error.InvalidDataError(errno.EINVAL, "Invalid data found when processing input")
            return [frame(value)]
        return SimpleNamespace(pts=None, dts=None, duration=0, decode=decode)

    packets = [packet(v) for v in (0.1, 0.2, None, 0.4)]
    stream = SimpleNamespace(time_base=None, start_time=None, codec_context=SimpleNamespace(frame_size=frame_size))
    damage = Damage()
    out = np.concatenate([f.to_ndarray()[0] for f in audio_frames(SimpleNamespace(demux=lambda s: iter(packets)),
                                                                   stream, damage)])
    expected = np.concatenate([np.full(1024, 0.1), np.full(1024, 0.2), np.zeros(expected_gap), np.full(1024, 0.4)])
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert damage.skipped == 1 and damage.error == "Invalid data found when processing input"
    assert damage.spans == [(None, None)]  # no time to report: the warning says "1 without timestamps"
