"""mutr.app.jobs with no browser and no Gradio: one page job is `mutr segment` plus a zip, strips and scores.

The demo clip and demo model are the real bundled ones (the page's default); the job's masks are
compared with what `mutr segment` writes for the same clip and prompts.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_utils import make_video
from typer.testing import CliRunner

from mutr.app.jobs import (DEMO, JobRequest, Limits, Workspace, checkpoint_choices, default_size, parse_prompts,
                           run_job)
from mutr.errors import InputError, MediaError
from mutr.io.writers import decode_rle
from mutr.hub import demo_checkpoint_dir
from mutr.predictor import Predictor, load_checkpoint

CLIP = demo_checkpoint_dir().parent / "clip.mp4"


@pytest.fixture(scope="module")
def predictor():
    before = torch.get_num_threads()
    model, is_demo = load_checkpoint(None)
    assert is_demo
    yield Predictor(model, device="cpu", threads=1)
    torch.set_num_threads(before)


@pytest.fixture()
def workspace(tmp_path):
    with Workspace(tmp_path) as ws:
        yield ws


def _rle_masks(path: Path) -> dict[tuple[int, int], np.ndarray]:
    data = json.loads(path.read_text())
    return {(a["prompt"], a["frame"]): decode_rle(a["segmentation"]) for a in data["annotations"]}


def test_parse_prompts_and_defaults():
    assert parse_prompts("  the blue circle \n\n the yellow square\n") == ("the blue circle", "the yellow square")
    assert parse_prompts("   \n") == () and parse_prompts(None) == ()
    assert default_size(DEMO) == 160 and default_size("some/folder") == 432
    assert checkpoint_choices()[0] == ("bundled demo model (synthetic shapes only)", DEMO)
    assert ("my/ckpt", "my/ckpt") in checkpoint_choices("my/ckpt")


def test_job_equals_segment_and_cleans_up(predictor, workspace, tmp_path, monkeypatch):
    job = workspace.new_job()
    seen = []
    result = run_job(JobRequest(CLIP, ("the blue circle",), "from-video", size=160), predictor, job,
                     on_progress=lambda done, total, fps: seen.append((done, total, fps)))
    assert [s[:2] for s in seen] == [(k, 10) for k in range(1, 11)] and all(s[2] > 0 for s in seen)
    assert result.frames == result.overlay_frames == 10
    assert [p.text for p in result.prompts] == ["the blue circle", "audio of the video"]
    # the demo model finds the circle and the sounding square on every frame (model card: J 0.97 / 0.97)
    assert [p.frames_with_mask for p in result.prompts] == [10, 10]
    assert all(0.5 < p.score <= 1.0 for p in result.prompts)
    for p in result.prompts:  # 8 thumbnails 96 px high, 4-px gaps
        assert Image.open(p.strip).size == (8 * 96 + 7 * 4, 96)
    assert sorted(x.name for x in job.iterdir()) == ["masks.zip", "out", "strip-0.png", "strip-1.png"]
    assert sorted(x.name for x in (job / "out").iterdir()) == ["masks.rle.json", "overlay.mp4"]  # PNGs only zipped
    with zipfile.ZipFile(result.masks_zip) as zf:
        names = zf.namelist()
        assert "masks/prompts.json" in names and len(names) == 1 + 2 * 10
        png = np.asarray(Image.open(zf.open("masks/prompt-1/00003.png")))

    from mutr_cli.main import app

    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["segment", str(CLIP), "--text", "the blue circle", "--audio-from-video",
                                   "--size", "160", "--threads", "1", "--device", "cpu", "--out", "cli", "--quiet"])
    assert out.exit_code == 0, out.output
    ours, theirs = _rle_masks(result.rle), _rle_masks(tmp_path / "cli" / "masks.rle.json")
    assert ours.keys() == theirs.keys() and len(ours) == 20
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert np.array_equal(png > 0, ours[(1, 3)])
    workspace.release(job)
    assert workspace.jobs() == [] and workspace.root.is_dir()
    workspace.close()
    assert not workspace.root.exists()


def test_job_span_is_start_to_end(predictor, workspace):
    result = run_job(JobRequest(CLIP, ("the yellow square",), start=1.0, end=3.0, size=160), predictor,
                     workspace.new_job())
    assert result.frames == 4  # 2 fps: frames at 1.0, 1.5, 2.0, 2.5 s
    assert sorted(_rle_masks(result.rle)) == [(0, 2), (0, 3), (0, 4), (0, 5)]


@pytest.mark.parametrize("case", ["empty", "not-a-video", "silent", "too-long", "too-big", "no-video", "span"])
def test_bad_input_is_one_line_and_leaves_nothing(case, predictor, workspace, tmp_path):
    text_mp4 = tmp_path / "notes.mp4"
    text_mp4.write_text("this is a text file, not a video\n")
    silent = tmp_path / "silent.mp4"
    make_video(silent, n=4)
    request, limits = {
        "empty": (JobRequest(CLIP, ()), Limits()),
        "not-a-video": (JobRequest(text_mp4, ("the blue circle",)), Limits()),
        "silent": (JobRequest(silent, (), "from-video"), Limits()),
        "too-long": (JobRequest(CLIP, ("the blue circle",)), Limits(max_seconds=2)),
        "too-big": (JobRequest(CLIP, ("the blue circle",)), Limits(max_upload_mb=0.001)),
        "no-video": (JobRequest(Path(""), ("the blue circle",)), Limits()),
        "span": (JobRequest(CLIP, ("the blue circle",), start=3, end=2), Limits()),
    }[case]
    expected = {
        "empty": (InputError, "nothing to segment: type a prompt"),
        "not-a-video": (MediaError, "notes.mp4 is not a video FFmpeg can read: upload a video file"),
        "silent": (MediaError, "silent.mp4 has no sound: untick \"use the video's own sound\""),
        "too-long": (InputError, "5 s of video is more than this page segments at once (2 s)"),
        "too-big": (InputError, "the video is 0.0365 MB; this page takes at most 0.001 MB"),
        "no-video": (InputError, "no video: upload one"),
        "span": (InputError, "end (2 s) must be after start (3 s)"),
    }[case]
    job = workspace.new_job()
    with pytest.raises(expected[0]) as err:
        run_job(request, predictor, job, limits)
    assert str(err.value).startswith(expected[1]) and "\n" not in str(err.value)
    assert not job.exists() and workspace.jobs() == []


def test_sound_file_prompt_and_markdown(predictor, workspace, tmp_path):
    from segment_utils import make_audio

    from mutr.app.jobs import describe, md_escape

    tone = make_audio(tmp_path / "my_tone.wav", 5.0)
    result = run_job(JobRequest(CLIP, ("the *white* triangle",), tone, size=160), predictor, workspace.new_job())
    assert [p.text for p in result.prompts] == ["the *white* triangle", "audio: my_tone.wav"]
    assert result.frames == 10
    table = describe(result)
    assert "| 1 | the \\*white\\* triangle | " in table and "| 2 | audio: my\\_tone.wav | " in table
    assert md_escape("a_b `c` [d]|e") == "a\\_b `c` \\[d\\]\\|e"
