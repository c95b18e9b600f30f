"""`mutr segment` in-process (Typer's CliRunner) and once as a real subprocess.

Outputs are decoded back: overlay frames, timestamps and audio; PNG values; RLE == PNG; stride
semantics; and every bad input from the issue gives one line, a non-zero exit and no output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from segment_utils import make_checkpoint, make_video
from typer.testing import CliRunner

from mutr.io.writers import decode_rle
from mutr_cli.main import app

runner = CliRunner()
FAST = ["--size", "64", "--threads", "1"]  # tiny model input; one thread is fastest for tensors this small



@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("MUTR_DEMO_CHECKPOINT", str(tmp_path / "no-demo-here"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    out = {"dir": d, "tiny": make_checkpoint(d / "tiny", "tiny"), "joint": make_checkpoint(d / "joint", "tiny-joint")}
    make_video(d / "clip.mp4", n=10, audio="aac")
    out["mp4"] = d / "clip.mp4"
    make_video(d / "mute.mp4", n=6)
    out["mute"] = d / "mute.mp4"
    make_video(d / "odd.mkv", n=5, size=(161, 97), codec="ffv1", pix_fmt="bgr0")
    out["odd"] = d / "odd.mkv"
    out["vfr_pts"] = [0, 1, 3, 4, 8, 9, 12]
    make_video(d / "vfr.mp4", n=7, pts=out["vfr_pts"], time_base=Fraction(1, 50), rate=25)
    out["vfr"] = d / "vfr.mp4"
    return out


def _segment(*args: str):
    return runner.invoke(app, ["segment", *map(str, args), *FAST])


def _video(path: Path) -> tuple[list[np.ndarray], list[float], set[str]]:
    with av.open(str(path)) as c:
        kinds = {s.type for s in c.streams}
        frames = list(c.decode(video=0))
        return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames], kinds


def _pngs(folder: Path) -> dict[int, np.ndarray]:
    return {int(p.stem): np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_writes_overlay_png_and_rle(media, tmp_path):
    out = tmp_path / "out"
    result = _segment(media["mp4"], "--text", "the red square", "-t", "blue circle", "--checkpoint", media["tiny"],
                      "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 10 and summary["input_frames"] == 10 and summary["fps"] > 0
    assert summary["prompts"] == ["the red square", "blue circle"] and summary["checkpoint"] == str(media["tiny"])
    assert summary["outputs"] == {"overlay": str(out / "overlay.mp4"), "png": str(out / "masks"),
                                  "rle": str(out / "masks.rle.json")}
    frames, times, kinds = _video(out / "overlay.mp4")
    assert len(frames) == 10 and frames[0].shape == (64, 96, 3)
    assert times == pytest.approx([i / 25 for i in range(10)], abs=1e-3)
    assert kinds == {"video", "audio"}  # the input's sound is kept
    assert json.loads((out / "masks" / "prompts.json").read_text()) == {"prompt-0": "the red square",
                                                                         "prompt-1": "blue circle"}
    rle = json.loads((out / "masks.rle.json").read_text())
    assert rle["num_frames"] == 10 and [p["text"] for p in rle["prompts"]] == summary["prompts"]
    for k in range(2):
        pngs = _pngs(out / "masks" / f"prompt-{k}")
        assert sorted(pngs) == list(range(10))
        anns = [a for a in rle["annotations"] if a["prompt"] == k]
        assert [a["frame"] for a in anns] == list(range(10))
        assert [a["time"] for a in anns] == pytest.approx([i / 25 for i in range(10)])
        for a in anns:
            png = pngs[a["frame"]]
            assert png.shape == (64, 96) and set(np.unique(png)) <= {0, 255}
            assert np.array_equal(decode_rle(a["segmentation"]), png == 255)
            assert 0 < a["score"] < 1 and len(a["bbox"]) == 4
    assert sorted(p.name for p in out.iterdir()) == ["masks", "masks.rle.json", "overlay.mp4"]  # no temp files


def test_stride_keeps_true_indices_and_every_overlay_frame(media, tmp_path):
    out = tmp_path / "out"
    result = _segment(media["mp4"], "-t", "red", "-c", media["tiny"], "-o", out, "--stride", "3", "--window", "2")
    assert result.exit_code == 0, result.output
    assert "segmented 4 frames (1 prompt)" in result.stdout and str(out / "overlay.mp4") in result.stdout
    assert sorted(_pngs(out / "masks" / "prompt-0")) == [0, 3, 6, 9]
    rle = json.loads((out / "masks.rle.json").read_text())
    assert [a["frame"] for a in rle["annotations"]] == [0, 3, 6, 9]
    frames, times, _ = _video(out / "overlay.mp4")
    assert len(frames) == 10 and times == pytest.approx([i / 25 for i in range(10)], abs=1e-3)


def test_start_end_and_format_choice(media, tmp_path):
    result = _segment(media["mp4"], "-t", "red", "-c", media["tiny"], "--start", "0.1", "--end", "0.3",
                      "--format", "png")
    assert result.exit_code == 0, result.output
    out = tmp_path / "clip_mutr"  # the default: <source name>_mutr in the current directory
    assert sorted(p.name for p in out.iterdir()) == ["masks"]
    assert sorted(_pngs(out / "masks" / "prompt-0")) == [3, 4, 5, 6, 7]  # 0.12 <= t < 0.3


def test_odd_size_mkv_keeps_its_size(media, tmp_path):
    out = tmp_path / "odd"
    result = _segment(media["odd"], "-t", "red", "-c", media["tiny"], "-o", out, "--format", "png,overlay")
    assert result.exit_code == 0, result.output
    assert "4:4:4" in result.stderr and result.stderr.startswith("warning:")  # warnings are one line each
    pngs = _pngs(out / "masks" / "prompt-0")
    assert len(pngs) == 5 and pngs[0].shape == (97, 161)
    frames, _, _ = _video(out / "overlay.mp4")
    assert len(frames) == 5 and frames[0].shape == (97, 161, 3)


def test_image_folder(media, tmp_path):
    from segment_utils import shapes_frame

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(shapes_frame(i, 161, 97)).save(folder / f"frame{i + 1}.png")
    out = tmp_path / "o"
    result = _segment(folder, "-t", "red", "-c", media["tiny"], "-o", out, "--format", "png,rle")
    assert result.exit_code == 0, result.output
    assert sorted(_pngs(out / "masks" / "prompt-0")) == [0, 1, 2, 3]
    rle = json.loads((out / "masks.rle.json").read_text())
    assert rle["video"]["width"] == 161
    assert [a["time"] for a in rle["annotations"]] == pytest.approx([0, 1 / 30, 2 / 30, 0.1], abs=1e-6)  # 30 fps


def test_variable_frame_rate_keeps_timestamps(media, tmp_path):
    out = tmp_path / "vfr"
    result = _segment(media["vfr"], "-t", "red", "-c", media["tiny"], "-o", out, "--format", "rle,overlay")
    assert result.exit_code == 0, result.output
    expected = [p / 50 for p in media["vfr_pts"]]
    rle = json.loads((out / "masks.rle.json").read_text())
    assert [a["time"] for a in rle["annotations"]] == pytest.approx(expected)
    _, times, _ = _video(out / "overlay.mp4")
    assert times == pytest.approx(expected, abs=1e-3)


def test_audio_from_video_and_demo_model(media, tmp_path, monkeypatch):
    monkeypatch.setenv("MUTR_DEMO_CHECKPOINT", str(media["joint"]))
    result = _segment(media["mp4"], "--audio-from-video", "-o", tmp_path / "a", "--format", "rle", "--json")
    assert result.exit_code == 0, result.output
    assert "TINY DEMO model" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["prompts"] == ["audio of the video"] and summary["checkpoint"] == "demo"


def test_existing_output_needs_overwrite(media, tmp_path):
    out = tmp_path / "out"
    args = [media["mp4"], "-t", "red", "-c", media["tiny"], "-o", out, "--format", "rle", "--end", "0.1"]
    assert _segment(*args).exit_code == 0
    before = (out / "masks.rle.json").read_bytes()
    again = _segment(*args)
    assert again.exit_code == 1 and "--overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    assert (out / "masks.rle.json").read_bytes() == before
    assert _segment(*args, "--overwrite", "--quiet").exit_code == 0
    assert _segment(*args, "--overwrite", "--quiet").stdout == ""


def _mux_garbage(path: Path, codec: str, fmt: str) -> Path:
    """Random bytes as packets of ``codec``: a container that opens but cannot be decoded."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_mux_stream(codec, width=64, height=48, time_base=Fraction(1, 25))
        rng = np.random.default_rng(0)
        for i in range(4):
            p = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 25)
            c.mux(p)
    return path


def _bad_inputs(media, tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "empty").mkdir()
    (tmp / "notavideo.mp4").write_bytes(b"this is not a video" * 100)
    Image.new("RGB", (1, 1)).save(tmp / "dot.png")
    Image.new("RGB", (8192, 20)).save(tmp / "wide.png")
    truncated = tmp / "truncated.mp4"
    truncated.write_bytes(media["mp4"].read_bytes()[:600])
    wrong = tmp / "wrong"  # tiny-joint's config with tiny's weights
    wrong.mkdir()
    (wrong / "config.json").write_bytes((media["joint"] / "config.json").read_bytes())
    (wrong / "model.safetensors").write_bytes((media["tiny"] / "model.safetensors").read_bytes())
    (tmp / "afile").write_text("x")
    tiny = ["-c", media["tiny"]]
    return {
        "missing": ([tmp / "nope.mp4", "-t", "red", *tiny], "not found"),
        "empty dir": ([tmp / "empty", "-t", "red", *tiny], "no images"),
        "not a video": ([tmp / "notavideo.mp4", "-t", "red", *tiny], "not a video"),
        "truncated": ([truncated, "-t", "red", *tiny], "truncated.mp4"),
        "unsupported codec": ([_mux_garbage(tmp / "avs2.mkv", "avs2", "matroska"), "-t", "red", *tiny], "no decoder"),
        "no decodable frame": ([_mux_garbage(tmp / "junk.avi", "mjpeg", "avi"), "-t", "red", *tiny],
                               "no frame could be decoded"),
        "1x1": ([tmp / "dot.png", "-t", "red", *tiny], "1x1"),
        "8K": ([tmp / "wide.png", "-t", "red", *tiny], "--max-size"),
        "empty text": ([media["mp4"], "-t", " ", *tiny], "empty"),
        "no audio": ([media["mute"], "--audio-from-video", "-c", media["joint"]],
                     "mute.mp4 has no audio stream; pass --audio FILE or --text"),
        "unknown checkpoint": ([media["mp4"], "-t", "red", "-c", "mutr-r5O"], "did you mean"),
        "wrong preset": ([media["mp4"], "-t", "red", "-c", wrong], "do not fit preset"),
        "no demo": ([media["mp4"], "-t", "red"], "pass --checkpoint"),
        "unwritable": ([media["mp4"], "-t", "red", *tiny, "-o", tmp / "afile" / "sub"], "choose"),
        "out is a file": ([media["mp4"], "-t", "red", *tiny, "-o", tmp / "afile"], "is a file"),
        "text to an audio model": ([media["mp4"], "--audio", tmp / "afile", *tiny], "takes no sound"),
        **({} if torch.cuda.is_available() else
           {"no cuda": ([media["mp4"], "-t", "red", *tiny, "--device", "cuda"], "--device cpu")}),
    }


def test_bad_input_is_one_line_and_leaves_nothing(media, tmp_path):
    for name, (args, needle) in _bad_inputs(media, tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        if "-o" not in args:
            args = [*args, "-o", out]
        result = _segment(*args)
        assert result.exit_code == 1, (name, result.output)
        assert result.stderr.startswith("error:"), (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert needle in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.output and result.stdout == ""
        assert not out.exists(), name


def test_long_text_is_truncated_with_a_warning(media, tmp_path):
    result = _segment(media["mp4"], "-t", "red " * 100, "-c", media["tiny"], "-o", tmp_path / "o", "--end", "0.1",
                      "--format", "rle")
    assert result.exit_code == 0, result.output
    assert "truncated" in result.stderr


def test_usage_errors_exit_2(media):
    assert _segment(media["mp4"]).exit_code == 2  # nothing to segment
    assert _segment(media["mp4"], "-t", "x", "--audio", "a.wav", "--audio-from-video").exit_code == 2
    assert _segment(media["mp4"], "-t", "x", "--format", "gif").exit_code == 2
    assert _segment(media["mp4"], "-t", "x", "--stride", "0").exit_code == 2
    assert _segment(media["mp4"], "-t", "x", "--precision", "fp8").exit_code == 2


def test_debug_shows_the_exception(media, tmp_path):
    result = _segment(tmp_path / "nope.mp4", "-t", "red", "-c", media["tiny"], "--debug")
    assert result.exit_code != 0 and type(result.exception).__name__ == "InputError"


def test_ctrl_c_leaves_no_partial_output(media, tmp_path, monkeypatch):
    from mutr.predictor import Predictor

    window = Predictor._window
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return window(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "_window", interrupted)
    out = tmp_path / "out"
    result = _segment(media["mp4"], "-t", "red", "-c", media["tiny"], "-o", out, "--window", "4")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert len(calls) == 2 and not out.exists()  # the folder we made is gone with its temporary files


def test_real_subprocess(media, tmp_path):
    exe = Path(sys.executable).parent / "mutr"
    out = tmp_path / "sub"
    env = {**os.environ, "MUTR_DEMO_CHECKPOINT": str(media["tiny"])}
    proc = subprocess.run([str(exe), "segment", str(media["mp4"]), "--text", "the red square", "--out", str(out),
                           "--json", *FAST], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 10 and summary["checkpoint"] == "demo"
    assert "TINY DEMO" in proc.stderr
    assert len(_video(out / "overlay.mp4")[0]) == 10 and len(_pngs(out / "masks" / "prompt-0")) == 10
