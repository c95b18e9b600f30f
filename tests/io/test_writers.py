"""Overlay video, PNG masks and RLE JSON: content, timing, audio, atomicity, overwrite refusal."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mutr.errors import InputError, MediaError, OutputExistsError
from mutr.io.video import open_source
from mutr.io.writers import OverlayWriter, PngMaskWriter, RleWriter, decode_rle, draw_overlay, prompt_colors

PROMPTS = ["the red square", "the sky"]


def make_video(path: Path, *, n=10, size=(64, 48), codec="libx264", pix_fmt="yuv420p", rate=25, pts=None,
               time_base=None, audio=None) -> None:  # fmt: skip
    """A small clip (moving red square) with an optional 440 Hz mono tone; see test_video.py."""
    w, h = size
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=rate)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            v.codec_context.time_base = v.time_base = time_base
        a = c.add_stream(audio, rate=48000 if audio == "libopus" else 16000, layout="mono") if audio else None
        for i in range(n):
            img = np.full((h, w, 3), 60, np.uint8)
            img[h // 3 : h // 3 + 12, (3 * i) % (w - 12) :][:, :12] = (255, 0, 0)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = pts[i] if pts is not None else i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            sr = a.codec_context.sample_rate
            end = pts[-1] * time_base + Fraction(1, rate) if pts is not None else Fraction(n, rate)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(sr * end)) / sr)).astype(np.float32)
            for k in range(0, len(tone), 960):
                af = av.AudioFrame.from_ndarray(tone[None, k : k + 960], format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, k
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)


def square_masks(frame, w=64, h=48) -> list[np.ndarray]:
    """Mask 0: a box around the red square of ``frame``; mask 1: the top rows."""
    red = (frame.image[..., 0] > 200) & (frame.image[..., 1] < 80)
    sky = np.zeros((h, w), bool)
    sky[:6] = True
    return [red, sky]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("clips")
    out = {"aac": d / "aac.mp4", "opus": d / "opus.mkv", "odd": d / "odd.mkv", "vfr": d / "vfr.mp4", "plain": d / "plain.avi"}
    make_video(out["aac"], audio="aac")
    make_video(out["opus"], audio="libopus")
    make_video(out["odd"], size=(161, 97), codec="ffv1", pix_fmt="bgr0", n=4)
    out["vfr_pts"] = [0, 3, 4, 9, 10, 22, 23, 30]  # in 1/50 s
    make_video(out["vfr"], n=8, pts=out["vfr_pts"], time_base=Fraction(1, 50), audio="aac")
    make_video(out["plain"], codec="mpeg4", n=6)
    return out


def _decode(path: Path) -> tuple[list, dict]:
    with av.open(str(path)) as c:
        streams = {s.type: s.codec_context.name for s in c.streams}
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return frames, streams


def _audio_span(path: Path) -> tuple[float, float]:
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
    return frames[0].time, frames[-1].time + frames[-1].samples / frames[-1].sample_rate


def _write_overlay(src, out: Path, stride: int = 1, **kwargs) -> None:
    with OverlayWriter(out, src.info, PROMPTS, **kwargs) as w:
        for k, frame in enumerate(src.iter_frames(include_skipped=True)):
            w.write(frame, square_masks(frame, src.width, src.height) if k % stride == 0 else None)


def test_overlay_keeps_frames_timing_and_audio(clips, tmp_path):
    src = open_source(clips["aac"])
    out = tmp_path / "overlay.mp4"
    _write_overlay(src, out)
    frames, streams = _decode(out)
    assert streams == {"video": "h264", "audio": "aac"}
    assert len(frames) == 10 and frames[0][1].shape == (48, 64, 3)
    assert [t for t, _ in frames] == pytest.approx([i / 25 for i in range(10)], abs=1e-3)
    start, end = _audio_span(out)
    assert start == pytest.approx(0, abs=0.07) and end == pytest.approx(0.4, abs=0.07)
    # the sky rows carry the second prompt's colour; the background below stays grey
    image = frames[3][1].astype(int)
    assert np.abs(image[:6].mean(axis=(0, 1)) - 60).max() > 40
    assert np.abs(image[40, 5] - 60).max() < 12
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_overlay_with_stride_holds_every_frame(clips, tmp_path):
    src = open_source(clips["aac"], stride=3)
    out = tmp_path / "strided.mp4"
    _write_overlay(src, out, stride=3)
    frames, _ = _decode(out)
    assert len(frames) == 10  # every input frame, showing the latest processed mask


def test_overlay_vfr_timestamps_and_start_cut(clips, tmp_path):
    times = [p / 50 for p in clips["vfr_pts"]]
    out = tmp_path / "vfr.mp4"
    _write_overlay(open_source(clips["vfr"]), out)
    frames, _ = _decode(out)
    assert [t for t, _ in frames] == pytest.approx(times, abs=1e-3)
    cut = tmp_path / "cut.mp4"
    _write_overlay(open_source(clips["vfr"], start=0.15), cut)  # frames at 0.18 s ... 0.6 s
    frames, streams = _decode(cut)
    assert [t for t, _ in frames] == pytest.approx([t - 0.18 for t in times[3:]], abs=1e-3)
    start, end = _audio_span(cut)
    assert "audio" in streams and start == pytest.approx(0, abs=0.07) and end == pytest.approx(0.44, abs=0.07)


def test_overlay_transcodes_other_audio_to_aac(clips, tmp_path):
    out = tmp_path / "from_opus.mp4"
    _write_overlay(open_source(clips["opus"]), out)
    frames, streams = _decode(out)
    assert streams == {"video": "h264", "audio": "aac"} and len(frames) == 10
    start, end = _audio_span(out)
    assert start == pytest.approx(0, abs=0.03) and end == pytest.approx(0.4, abs=0.05)


@pytest.mark.parametrize(("codec", "ext", "decoder"), [("libmp3lame", "mkv", "mp3float"), ("pcm_s16le", "avi", "aac")])
def test_overlay_copies_mp3_and_transcodes_pcm(tmp_path, codec, ext, decoder):
    clip = tmp_path / f"clip.{ext}"
    make_video(clip, audio=codec)
    out = tmp_path / "out.mp4"
    _write_overlay(open_source(clip), out)
    frames, streams = _decode(out)
    assert streams == {"video": "h264", "audio": decoder} and len(frames) == 10
    assert _audio_span(out)[1] == pytest.approx(0.4, abs=0.07)


def test_overlay_odd_size_keeps_size(clips, tmp_path):
    out = tmp_path / "odd.mp4"
    with pytest.warns(UserWarning, match="odd size"):
        _write_overlay(open_source(clips["odd"]), out)
    frames, streams = _decode(out)
    assert streams == {"video": "h264"} and len(frames) == 4 and frames[0][1].shape == (97, 161, 3)


def test_overlay_falls_back_to_mpeg4(clips, tmp_path):
    out = tmp_path / "fallback.mp4"
    with pytest.warns(UserWarning, match="MPEG-4"):
        _write_overlay(open_source(clips["plain"]), out, codec="no-such-encoder")
    frames, streams = _decode(out)
    assert streams == {"video": "mpeg4"} and len(frames) == 6


def test_overlay_without_audio_when_asked(clips, tmp_path):
    out = tmp_path / "silent.mp4"
    _write_overlay(open_source(clips["aac"]), out, audio=False)
    assert _decode(out)[1] == {"video": "h264"}


def test_draw_overlay_blends_outlines_and_labels():
    image = np.full((100, 200, 3), 100, np.uint8)
    mask = np.zeros((100, 200), bool)
    mask[40:90, 20:180] = True
    color = prompt_colors(1)[0]
    out = draw_overlay(image, [mask], ["a long prompt"], [color], alpha=0.5)
    assert np.abs(out[70, 100] - (np.array(color) * 0.5 + 50)).max() <= 1
    np.testing.assert_array_equal(out[95, 100], image[95, 100])  # outside the mask
    np.testing.assert_array_equal(out[40, 100], color)  # the outline
    assert (out[25:40, 20:40] == color).all(axis=-1).mean() > 0.3  # label box sits above the object
    np.testing.assert_array_equal(draw_overlay(image, [None], ["x"], [color]), image)


def test_png_masks(clips, tmp_path):
    src = open_source(clips["aac"], stride=4)
    out = tmp_path / "masks"
    expected = {}
    with PngMaskWriter(out, PROMPTS) as w:
        for frame in src:
            masks = square_masks(frame)
            expected[frame.index] = masks
            w.write(frame.index, masks)
    assert json.loads((out / "prompts.json").read_text()) == {"prompt-0": PROMPTS[0], "prompt-1": PROMPTS[1]}
    for k in range(2):
        names = sorted(p.name for p in (out / f"prompt-{k}").iterdir())
        assert names == ["00000.png", "00004.png", "00008.png"]
        for index in (0, 4, 8):
            png = np.asarray(Image.open(out / f"prompt-{k}" / f"{index:05d}.png"))
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            np.testing.assert_array_equal(png == 255, expected[index][k])
    assert not list(tmp_path.glob(".*"))


def test_rle_round_trip(clips, tmp_path):
    src = open_source(clips["aac"])
    out = tmp_path / "masks.json"
    expected = []
    with RleWriter(out, src.info, PROMPTS) as w:
        for frame in src:
            masks = square_masks(frame)
            expected.append((frame.index, frame.time, masks))
            w.write(frame.index, frame.time, masks, scores=[0.9, 0.25], boxes=[None, [0, 0, 64, 6]])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["format"] == "mutr-rle" and data["num_frames"] == 10
    assert data["video"]["width"] == 64 and data["video"]["fps"] == 25.0
    assert data["prompts"] == [{"id": 0, "text": PROMPTS[0]}, {"id": 1, "text": PROMPTS[1]}]
    anns = data["annotations"]
    assert len(anns) == 20
    for i, (index, time, masks) in enumerate(expected):
        for k in range(2):
            ann = anns[2 * i + k]
            assert (ann["frame"], ann["prompt"]) == (index, k) and ann["time"] == pytest.approx(time)
            assert isinstance(ann["segmentation"]["counts"], str)
            np.testing.assert_array_equal(decode_rle(ann["segmentation"]), masks[k])
        ys, xs = np.nonzero(masks[0])
        assert anns[2 * i]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert anns[2 * i]["score"] == pytest.approx(0.9) and anns[2 * i + 1]["bbox"] == [0, 0, 64, 6]


# -- atomicity and overwrite --------------------------------------------------------------


def _writers(kind: str, path: Path, info, **kwargs):
    if kind == "overlay":
        return OverlayWriter(path, info, PROMPTS, **kwargs)
    if kind == "png":
        return PngMaskWriter(path, PROMPTS, **kwargs)
    return RleWriter(path, info, PROMPTS, **kwargs)


def _write_one(kind, w, frame):
    masks = square_masks(frame)
    if kind == "overlay":
        w.write(frame, masks)
    elif kind == "png":
        w.write(frame.index, masks)
    else:
        w.write(frame.index, frame.time, masks)


KINDS = ["overlay", "png", "rle"]
NAMES = {"overlay": "out.mp4", "png": "masks", "rle": "out.json"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(clips, tmp_path, kind, error):
    src = open_source(clips["aac"])
    path = tmp_path / NAMES[kind]
    with pytest.raises(error):
        with _writers(kind, path, src.info) as w:
            for i, frame in enumerate(src):
                _write_one(kind, w, frame)
                if i == 3:
                    raise error("stop")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_existing_output_is_kept_unless_overwrite(clips, tmp_path, kind):
    src = open_source(clips["aac"], end=0.1)
    path = tmp_path / NAMES[kind]
    if kind == "png":
        path.mkdir()
        (path / "old.txt").write_text("old")
    else:
        path.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _writers(kind, path, src.info)
    with _writers(kind, path, src.info, overwrite=True) as w:
        for frame in src:
            _write_one(kind, w, frame)
    assert not (path / "old.txt").exists() if kind == "png" else path.read_bytes() != b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("kind", KINDS)
def test_unwritable_destination(clips, tmp_path, kind):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(MediaError, match="--out"):
        _writers(kind, blocker / NAMES[kind], open_source(clips["aac"]).info)


def test_abort_and_bad_masks(clips, tmp_path):
    src = open_source(clips["aac"])
    w = RleWriter(tmp_path / "a.json", src.info, PROMPTS)
    frame = next(iter(src))
    with pytest.raises(InputError, match="one mask per prompt"):
        w.write(0, 0.0, [np.zeros((48, 64), bool)])
    with pytest.raises(InputError, match="frame size"):
        w.write(0, 0.0, [np.zeros((10, 10), bool)] * 2)
    with pytest.raises(InputError, match="threshold"):
        w.write(0, 0.0, [np.zeros((48, 64), np.float32)] * 2)
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with OverlayWriter(tmp_path / "b.mp4", src.info, PROMPTS) as ov:
        with pytest.raises(InputError, match="same source"):
            ov.write(frame.__class__(0, 0.0, np.zeros((10, 10, 3), np.uint8)))
        ov.write(frame)  # no masks yet: the plain frame
    assert (tmp_path / "b.mp4").exists()
