"""Streamed decoding: every container we generate here is a few KB and decodes in milliseconds.

Odd sizes (161x97) cannot be 4:2:0, so they are tested losslessly through FFV1/bgr0 in MKV and
through PNG folders; 4:2:0 codecs get even sizes.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import segment_utils
from PIL import Image

from mutr.errors import InputError, MediaError
from mutr.io.video import MAX_LONG_SIDE, Frame, open_source


def shape_frame(i: int, w: int, h: int) -> np.ndarray:
    """A moving red square on a green/blue background; frame i is recognisable by its content."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 40 + (i * 17) % 180
    img[: h // 2, :, 2] = 200
    s = max(4, min(w, h) // 4)
    x = (i * 3) % (w - s)
    img[h // 3 : h // 3 + s, x : x + s] = (255, 0, 0)
    return img


def make_video(path: Path, *, size: tuple[int, int] = (64, 48), **kwargs) -> list[np.ndarray]:
    """segment_utils.make_video with this file's frames (each recognisable by its content)."""
    return segment_utils.make_video(path, size=size, frame=shape_frame, **kwargs)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("media")
    out = {"dir": d}
    out["mp4"] = d / "clip.mp4"
    out["frames"] = make_video(out["mp4"], audio="aac")
    out["mkv_odd"] = d / "odd.mkv"
    out["odd_frames"] = make_video(out["mkv_odd"], size=(161, 97), codec="ffv1", pix_fmt="bgr0", n=6)
    out["avi"] = d / "clip.avi"
    make_video(out["avi"], codec="mpeg4", n=10)
    out["webm"] = d / "clip.webm"
    make_video(out["webm"], codec="libvpx-vp9", n=8)
    out["vfr_pts"] = [0, 40, 120, 130, 300, 310, 400, 401, 520, 900]  # milliseconds
    out["vfr"] = d / "vfr.mkv"
    make_video(out["vfr"], pts=out["vfr_pts"], time_base=Fraction(1, 1000), n=10, codec="ffv1", pix_fmt="bgr0")
    return out


def test_mp4_metadata_and_frames(media):
    src = open_source(media["mp4"])
    assert (src.width, src.height, src.fps, src.num_frames, src.rotation) == (64, 48, 25.0, 12, 0)
    assert src.has_audio and src.info.kind == "video" and src.info.codec == "h264"
    assert src.duration == pytest.approx(12 / 25, abs=1e-3)
    frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert [f.time for f in frames] == pytest.approx([i / 25 for i in range(12)], abs=1e-6)
    for f, ref in zip(frames, media["frames"]):
        assert isinstance(f, Frame) and f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3)
        assert np.abs(f.image.astype(int) - ref).mean() < 6  # lossless H.264 + YUV round trip


@pytest.mark.parametrize("key", ["avi", "webm"])
def test_other_containers_decode(media, key):
    src = open_source(media[key])
    frames = list(src)
    assert len(frames) == {"avi": 10, "webm": 8}[key]
    assert frames[-1].time == pytest.approx((len(frames) - 1) / 25, abs=1e-3)
    assert not src.has_audio


def test_odd_size_lossless_mkv(media):
    src = open_source(media["mkv_odd"])
    assert (src.width, src.height) == (161, 97) and src.num_frames is None  # MKV stores no count
    frames = list(src)
    assert len(frames) == 6
    for f, ref in zip(frames, media["odd_frames"]):
        np.testing.assert_array_equal(f.image, ref)


def test_stride_keeps_true_indices(media):
    src = open_source(media["mp4"], stride=5)
    assert [f.index for f in src] == [0, 5, 10]
    assert src.expected_frames == 3
    everything = list(src.iter_frames(include_skipped=True))
    assert [f.index for f in everything] == list(range(12))
    assert [f.index for f in everything if f.selected] == [0, 5, 10]


def test_start_end_select_by_time(media):
    src = open_source(media["mp4"], start=0.1, end=0.3, stride=2)
    frames = list(src)
    # frames at 0.12, 0.16, ..., 0.28 are in range; stride counts from the first of them
    assert [f.index for f in frames] == [3, 5, 7]
    assert frames[0].time == pytest.approx(0.12, abs=1e-6)


def test_variable_frame_rate_uses_pts(media):
    src = open_source(media["vfr"])
    times = [f.time for f in src]
    assert times == pytest.approx([p / 1000 for p in media["vfr_pts"]], abs=1e-6)
    sel = open_source(media["vfr"], start=0.125, end=0.45)
    assert [f.index for f in sel] == [3, 4, 5, 6, 7]


def test_rotation_metadata_makes_frames_upright(tmp_path):
    path = tmp_path / "rot.mp4"
    frames = make_video(path, rotation=90, n=3)
    src = open_source(path)
    assert src.rotation == 90 and (src.width, src.height) == (48, 64)
    for f, ref in zip(src, frames):
        assert f.image.shape == (64, 48, 3)
        assert np.abs(f.image.astype(int) - np.rot90(ref, 1)).mean() < 6


def test_max_size_downscales_and_huge_frames_are_refused(tmp_path, media):
    src = open_source(media["mp4"], max_size=32)
    assert (src.width, src.height) == (32, 24) and (src.info.source_width, src.info.source_height) == (64, 48)
    assert next(iter(src)).image.shape == (24, 32, 3)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (MAX_LONG_SIDE + 4, 64)).save(huge)
    with pytest.raises(MediaError, match=r"4100x64.*--max-size 4096"):
        open_source(huge)
    img = open_source(huge, max_size=2050)
    assert (img.width, img.height) == (2050, 32)
    assert next(iter(img)).image.shape == (32, 2050, 3)


def test_tiny_frames_are_refused(tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    with pytest.raises(MediaError, match="8x8"):
        open_source(tiny)


def test_image_folder_natural_order_and_times(tmp_path):
    frames = [shape_frame(i, 161, 97) for i in range(11)]
    for i, img in enumerate(frames):
        Image.fromarray(img).save(tmp_path / f"frame{i}.png")  # frame10 must come after frame9
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(tmp_path, stride=2, fps=10)
    assert (src.width, src.height, src.num_frames, src.info.kind) == (161, 97, 11, "images")
    out = list(src)
    assert [f.index for f in out] == [0, 2, 4, 6, 8, 10]
    assert [f.time for f in out] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    for f in out:
        np.testing.assert_array_equal(f.image, frames[f.index])


def test_image_folder_skips_unreadable_and_rejects_mixed_sizes(tmp_path):
    for i in range(4):
        Image.fromarray(shape_frame(i, 32, 32)).save(tmp_path / f"{i:05d}.jpg")
    (tmp_path / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="unreadable"):
        assert [f.index for f in open_source(tmp_path)] == [0, 1, 3]
    Image.new("RGB", (40, 32)).save(tmp_path / "00002.jpg")
    with pytest.raises(MediaError, match="same size"):
        list(open_source(tmp_path))


def test_single_image_with_exif_rotation(tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored = shape_frame(0, 64, 32)
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    src = open_source(path)
    assert (src.width, src.height, src.num_frames) == (32, 64, 1)
    [frame] = list(src)
    assert frame.index == 0 and frame.time == 0.0 and frame.image.shape == (64, 32, 3)
    assert np.abs(frame.image.astype(int) - np.rot90(stored, -1)).mean() < 8


def test_iteration_is_lazy_and_repeatable(media):
    src = open_source(media["mp4"])
    it = iter(src)
    assert next(it).index == 0 and next(it).index == 1
    it.close()  # an abandoned iterator releases its container
    assert len(list(src)) == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": 0}, "stride"),
        ({"start": -1.0}, "start"),
        ({"start": 0.3, "end": 0.2}, "after start"),
        ({"start": 9.0}, "past the end"),
    ],
)
def test_bad_arguments(media, kwargs, match):
    with pytest.raises(InputError, match=match):
        open_source(media["mp4"], **kwargs)


def test_missing_empty_and_not_video(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "nope.mp4")
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path)
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello, I am not a video")
    with pytest.raises(MediaError, match="not a video"):
        open_source(fake)


def _mux_garbage(path: Path, codec: str, fmt: str) -> None:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_mux_stream(codec, width=64, height=48, time_base=Fraction(1, 25))
        rng = np.random.default_rng(0)
        for i in range(4):
            p = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 25)
            c.mux(p)


def test_unsupported_codec(tmp_path):
    path = tmp_path / "avs2.mkv"
    _mux_garbage(path, "avs2", "matroska")  # FFmpeg knows the codec id but has no decoder
    with pytest.raises(MediaError, match="no decoder"):
        open_source(path)


def test_zero_decodable_frames(tmp_path):
    path = tmp_path / "junk.avi"
    _mux_garbage(path, "mjpeg", "avi")
    with pytest.raises(MediaError, match="no frame could be decoded"):
        open_source(path)


def test_truncated_stream_yields_what_decodes_and_warns(tmp_path):
    path = tmp_path / "long.mkv"
    make_video(path, n=60)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    src = open_source(cut)
    with pytest.warns(UserWarning, match="truncated"):
        frames = list(src)
    assert 0 < len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))
    with warnings.catch_warnings():  # a range that stops early must not warn
        warnings.simplefilter("error")
        assert len(list(open_source(cut, end=0.2))) == 5


def test_unreadable_file_permission(tmp_path, media):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path = tmp_path / "locked.mp4"
    path.write_bytes(media["mp4"].read_bytes())
    path.chmod(0)
    with pytest.raises(MediaError, match="permission"):
        open_source(path)
