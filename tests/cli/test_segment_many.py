"""`mutr segment` with many videos: folders/globs/manifests, per-video folders, summary, resume,
failures that do not stop the others, and 2 processes (torchrun's environment, gloo) writing
byte-identical outputs to one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ranks import run_ranks
from segment_utils import make_checkpoint, make_video
from typer.testing import CliRunner

from mutr.batch import SegmentOptions, VideoJob, frame_count
from mutr.distributed import balanced_shares
from mutr_cli.main import app

runner = CliRunner()
FAST = ["--size", "64", "--threads", "1", "--window", "4"]
LENGTHS = (3, 9, 5, 14, 7, 11)  # six videos of different lengths: shares must balance frames, not names




@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    (d / "clips").mkdir()
    for i, n in enumerate(LENGTHS):
        make_video(d / "clips" / f"v{i}.mp4", n=n)
    (d / "broken.mp4").write_bytes(b"not a video at all" * 50)
    return {"dir": d, "clips": d / "clips", "ck": make_checkpoint(d / "tiny", "tiny")}


def segment(*args) -> object:
    return runner.invoke(app, ["segment", *map(str, args), *FAST])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under the per-video folders, by relative path (summary.json aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "summary.json"}


def test_folder_of_videos_gives_a_folder_each_and_a_summary(media, tmp_path):
    res = segment(media["clips"], "-t", "the red square", "-c", media["ck"], "-o", "out")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", *(f"v{i}" for i in range(6))]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["videos"], summary["done"], summary["failed"], summary["frames"]) == (6, 6, 0, sum(LENGTHS))
    assert [Path(r["video"]).name for r in summary["results"]] == [f"v{i}.mp4" for i in range(6)]
    assert [r["frames"] for r in summary["results"]] == list(LENGTHS)
    for i, n in enumerate(LENGTHS):
        assert len(list((out / f"v{i}" / "masks" / "prompt-0").glob("*.png"))) == n
        rle = json.loads((out / f"v{i}" / "masks.rle.json").read_text())
        assert rle["num_frames"] == n and (out / f"v{i}" / "overlay.mp4").stat().st_size > 0
    assert "v3.mp4" in res.stdout and "6 segmented" in res.stdout
    # the same run again: everything is skipped, nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = segment(media["clips"], "-t", "the red square", "-c", media["ck"], "-o", "out", "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["done"], report["skipped"]) == (0, 6)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # other prompts into the same folders: refused per video, never taken as done
    other = segment(media["clips"], "-t", "blue circle", "-c", media["ck"], "-o", "out", "--json")
    assert other.exit_code == 1
    errors = [r["error"] for r in json.loads(other.stdout)["results"]]
    assert all("holds results for other prompts (the red square)" in e for e in errors)


def test_manifest_with_a_broken_video_finishes_the_others(media, tmp_path):
    clips = media["clips"]
    lines = [{"video": str(clips / "v0.mp4"), "text": ["the red square", "blue circle"]},
             {"video": str(media["dir"] / "broken.mp4")},
             {"video": str(clips / "v2.mp4"), "out": "second", "text": "blue circle"}]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    res = segment("--manifest", manifest, "-t", "red", "-c", media["ck"], "-o", "out", "--format", "png,rle")
    assert res.exit_code == 1, res.output
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["done", "failed", "done"]
    assert summary["failed_videos"][0]["video"].endswith("broken.mp4")
    assert "not a video" in summary["failed_videos"][0]["error"]
    assert [r["prompts"] for r in summary["results"]] == [["the red square", "blue circle"], [], ["blue circle"]]
    assert sorted(p.name for p in out.iterdir()) == ["second", "summary.json", "v0"]  # nothing of the broken one
    assert sorted(p.name for p in (out / "v0" / "masks").iterdir()) == ["prompt-0", "prompt-1", "prompts.json"]
    assert "broken.mp4" in res.stderr and "1 of 3 videos failed" in res.stderr


def test_a_killed_run_resumes_without_recomputing_finished_videos(media, tmp_path, monkeypatch):
    from mutr.predictor import Predictor

    segment_video = Predictor.segment
    seen: list[str] = []

    def dies_on_the_third(self, source, *args, **kwargs):
        seen.append(Path(source).name)
        if len(seen) == 3:
            raise KeyboardInterrupt  # the process is killed while it works on the third video
        return segment_video(self, source, *args, **kwargs)

    monkeypatch.setattr(Predictor, "segment", dies_on_the_third)
    args = (media["clips"], "-t", "red", "-c", media["ck"], "-o", "out", "--format", "rle")
    assert segment(*args).exit_code == 130
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["v0", "v1"]  # finished ones only; no temporary, no summary
    monkeypatch.setattr(Predictor, "segment", segment_video)
    first = (out / "v0" / "masks.rle.json").stat().st_mtime_ns
    calls: list[str] = []
    monkeypatch.setattr(Predictor, "segment", lambda self, s, *a, **k: calls.append(Path(s).name)
                        or segment_video(self, s, *a, **k))
    res = segment(*args, "--json")
    assert res.exit_code == 0, res.output
    assert calls == ["v2.mp4", "v3.mp4", "v4.mp4", "v5.mp4"]
    assert [r["status"] for r in json.loads(res.stdout)["results"]] == ["skipped"] * 2 + ["done"] * 4
    assert (out / "v0" / "masks.rle.json").stat().st_mtime_ns == first
    # a temporary folder left by a hard kill is cleared, never taken for a result
    stale = out / ".v5.mutr-tmp-deadbeef"
    stale.mkdir()
    shutil.rmtree(out / "v5")
    assert segment(*args).exit_code == 0 and not stale.exists() and (out / "v5" / "masks.rle.json").is_file()


def _two_ranks(media, out: Path):
    def rank_main():
        res = runner.invoke(app, ["segment", str(media["clips"]), "-t", "the red square", "-t", "blue circle",
                                  "-c", str(media["ck"]), "-o", str(out), "--format", "png,rle", "--quiet", *FAST])
        return res.exit_code, res.output

    return run_ranks(rank_main, 2)


def test_two_processes_write_byte_identical_outputs_to_one(media, tmp_path):
    one = segment(media["clips"], "-t", "the red square", "-t", "blue circle", "-c", media["ck"], "-o", "one",
                  "--format", "png,rle", "--quiet")
    assert one.exit_code == 0, one.output
    results = _two_ranks(media, tmp_path / "two")
    assert [code for code, _ in results] == [0, 0], results
    a, b = tree(tmp_path / "one"), tree(tmp_path / "two")
    assert len(a) == 6 * 2 + sum(2 * n for n in LENGTHS)  # rle + prompts.json each; a PNG per frame and prompt
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["done"] == 6
    ranks = {Path(r["video"]).stem: r["rank"] for r in summary["results"]}
    frames = [sum(n for i, n in enumerate(LENGTHS) if ranks[f"v{i}"] == r) for r in (0, 1)]
    assert sorted(frames) == [24, 25]  # LPT on frame counts (14+7+3 | 11+9+5), not names


def test_shards_of_a_job_array_cover_every_video_once(media, tmp_path):
    for i in range(3):
        res = segment(media["clips"], "-t", "red", "-c", media["ck"], "-o", "out", "--format", "rle",
                      "--shard", f"{i}/3", "--quiet")
        assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    got = [json.loads((out / f"summary.shard-{i}-of-3.json").read_text()) for i in range(3)]
    names = [Path(r["video"]).stem for g in got for r in g["results"]]
    assert sorted(names) == [f"v{i}" for i in range(6)]
    assert sorted(g["frames"] for g in got) == [16, 16, 17]  # 14+3 | 11+5 | 9+7


def test_balanced_shares_and_frame_counts(media):
    assert balanced_shares([3, 9, 5, 14, 7, 11], 2) == [[0, 3, 4], [1, 2, 5]]
    assert balanced_shares([1, 1, 1], 5) == [[0], [1], [2], [], []]
    assert balanced_shares([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]  # ties: by position
    job = VideoJob(media["clips"] / "v3.mp4", ("x",), None, Path("o"), "x")
    assert frame_count(job, SegmentOptions()) == 14
    assert frame_count(job, SegmentOptions(stride=4)) == 4


def test_bad_batch_inputs_are_one_line(media, tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "a.mp4"}) + "\n{oops\n")
    (tmp_path / "keys.jsonl").write_text(json.dumps({"video": "a.mp4", "txt": "red"}) + "\n")
    (tmp_path / "silent.jsonl").write_text(json.dumps({"video": str(media["clips"] / "v1.mp4")}) + "\n")
    (tmp_path / "other").mkdir()
    shutil.copy(media["clips"] / "v0.mp4", tmp_path / "other" / "v0.mp4")
    ck = ["-c", media["ck"]]
    cases = {
        "bad line": (["--manifest", tmp_path / "bad.jsonl", "-t", "red", *ck], "bad.jsonl line 2 is not JSON"),
        "unknown key": (["--manifest", tmp_path / "keys.jsonl", *ck], "keys.jsonl line 1: unknown key 'txt'"),
        "no manifest": (["--manifest", tmp_path / "none.jsonl", "-t", "red", *ck], "manifest not found"),
        "duplicates": ([media["clips"], tmp_path / "other", "-t", "red", *ck], "would both write"),
        "glob": ([str(tmp_path / "nothing" / "*.mp4"), "-t", "red", *ck], "matches no file"),
        "shard": ([media["clips"], "-t", "red", "--shard", "3/2", *ck], "--shard 3/2"),
        "shard syntax": ([media["clips"], "-t", "red", "--shard", "half", *ck], "is not I/N"),
        "no prompt": (["--manifest", tmp_path / "silent.jsonl", *ck], "line 1: nothing to segment in v1.mp4"),
    }
    for name, (args, needle) in cases.items():
        res = segment(*args, "-o", tmp_path / "o")
        assert res.exit_code == 1, (name, res.output)
        assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1, (name, res.stderr)
        assert needle in res.stderr, (name, res.stderr)
        assert not (tmp_path / "o").exists(), name
    assert segment("-t", "red").exit_code == 2  # neither SOURCE nor --manifest


@pytest.mark.slow
def test_real_torchrun(media, tmp_path):
    """The exact command of the README, through torchrun (~20 s of start-up on two cores)."""
    exe = Path(sys.executable).parent / "mutr"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", str(exe), "segment", str(media["clips"]), "-t", "red",
           "-c", str(media["ck"]), "-o", str(tmp_path / "two"), "--format", "png,rle", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = segment(media["clips"], "-t", "red", "-c", media["ck"], "-o", "one", "--format", "png,rle", "--quiet")
    assert one.exit_code == 0
    a, b = tree(tmp_path / "one"), tree(tmp_path / "two")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_inputs_expand_folders_globs_and_frame_folders(media, tmp_path):
    from PIL import Image

    from mutr.batch import expand_inputs, is_batch

    for name in ("b", "a10", "a2"):
        (tmp_path / "frames" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32)).save(tmp_path / "frames" / name / f"{i}.png")
    shots = tmp_path / "frames" / "a2"
    assert [p.name for p, _ in expand_inputs([tmp_path / "frames"])] == ["a2", "a10", "b"]  # natural order
    assert [p for p, _ in expand_inputs([shots])] == [shots] and not is_batch([shots])  # one folder of frames
    assert not is_batch([media["clips"] / "v0.mp4"]) and not is_batch([tmp_path / "missing.mp4"])
    assert is_batch([media["clips"]]) and is_batch([str(media["clips"] / "v*.mp4")])
    globbed = expand_inputs([str(media["clips"] / "v[13].mp4"), media["clips"] / "v0.mp4"])
    assert [p.name for p, _ in globbed] == ["v1.mp4", "v3.mp4", "v0.mp4"]  # in the order given
