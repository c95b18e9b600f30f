"""`mutr eval` in-process (Typer's CliRunner): every synthetic layout end to end with a tiny
random checkpoint, ground truth given as --predictions, resume, and the user errors."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from segment_utils import make_checkpoint
from typer.testing import CliRunner

from mutr.data import ANNOTATOR_SETS, AVSBenchEval, RefDavisEval, write_synthetic
from mutr.model.mutr import MUTR
from mutr_cli.main import app

runner = CliRunner()
FAST = ["--size", "64", "--threads", "1"]
DATASETS = {"ref-davis17": "davis", "ref-youtube-vos": "ytvos", "avsbench-s4": "avsbench-s4",
            "avsbench-ms3": "avsbench-ms3"}




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    out = {"ck": make_checkpoint(d / "ck", "tiny-joint")}
    for layout, n in (("davis", 2), ("ytvos", 3), ("avsbench-s4", 2), ("avsbench-ms3", 2)):
        out[layout] = write_synthetic(layout, d / layout, num_videos=n, num_frames=4, size=(48, 64))
    return out


def run(*args: str):
    return runner.invoke(app, ["eval", *map(str, args)])


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_end_to_end(files, tmp_path, dataset) -> None:
    root = files[DATASETS[dataset]]
    res = run("--dataset", dataset, "--data-root", root, "--checkpoint", files["ck"], "--out", "o", *FAST, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    out = tmp_path / "o"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == report["metrics"] and saved["dataset"] == dataset
    rows = list(csv.DictReader(open(out / "per_video.csv")))
    assert len(rows) == report["num_videos"] == report["predicted"] // (4 if dataset == "ref-davis17" else 1)
    if dataset == "ref-youtube-vos":
        assert report["metrics"] == {} and zipfile.ZipFile(out / "submission.zip").namelist()
        assert not (out / "per_video.png").exists()
    else:
        assert (out / "per_video.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        key = "J&F-Mean" if dataset == "ref-davis17" else "mIoU"
        assert 0.0 <= report["metrics"][key] <= 1.0
    # the predictions it wrote score the same without the model
    again = run("--dataset", dataset, "--data-root", root, "--predictions", out, "--out", "re", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == report["metrics"]


def test_ground_truth_as_predictions(files, tmp_path) -> None:
    for s in ANNOTATOR_SETS:
        for v in RefDavisEval(files["davis"]):
            shutil.copytree(files["davis"] / "valid" / "Annotations" / v.video_id, tmp_path / "gt" / s / v.video_id)
    res = run("--dataset", "ref-davis17", "--data-root", files["davis"], "--predictions", "gt", "--out", "o")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines() if line.strip().startswith(("J", "F"))]
    lines = {row[0]: row[1:] for row in rows}
    assert lines["J&F-Mean"] == lines["J-Mean"] == lines["J-Recall"] == lines["F-Mean"] == ["1.0000"] * 5
    assert lines["J-Decay"] == lines["F-Decay"] == ["0.0000"] * 5
    files_ = AVSBenchEval(files["avsbench-ms3"], "ms3", "test").files
    for v in files_.videos:
        shutil.copytree(files_.mask(v, 0).parent, tmp_path / "avs" / v.name)
    res = run("--dataset", "avsbench-ms3", "--data-root", files["avsbench-ms3"], "--predictions", "avs", "--out", "a",
              "--metric-batch-size", "1", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["metrics"] == {"mIoU": 1.0, "F-score": 1.0, "J": 1.0, "F": 1.0, "J&F": 1.0}
    assert report["info"]["metric_batch_size"] == 1 and report["info"]["metric_batches"] == 2


def test_resume_counts_model_calls(files, tmp_path, monkeypatch) -> None:
    calls, stop_at = [], [None]
    decode = MUTR.decode

    def counting(self, *a, **k):
        calls.append(1)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a video
        return decode(self, *a, **k)

    monkeypatch.setattr(MUTR, "decode", counting)
    videos = RefDavisEval(files["davis"])
    per_video = [4 * len(v.objects) for v in videos]  # one decode per object and annotator set
    args = ["--dataset", "ref-davis17", "--data-root", files["davis"], "--checkpoint", files["ck"], "--out", "o", *FAST]
    stop_at[0] = per_video[0] + 2
    res = run(*args)
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
    pred = tmp_path / "o" / "predictions"
    assert all((pred / s / videos[0].video_id).is_dir() for s in ANNOTATOR_SETS)
    assert not any((pred / s / videos[1].video_id).exists() for s in ANNOTATOR_SETS)
    assert not list(pred.rglob(".tmp-*")) and not (tmp_path / "o" / "metrics.json").exists()
    calls.clear()
    stop_at[0] = None
    res = run(*args, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert len(calls) == report["model_calls"] == per_video[1]  # the first video was skipped
    assert (report["predicted"], report["skipped"]) == (4, 4)
    res = run(*args)  # finished: refused without --overwrite
    assert res.exit_code == 1 and "--overwrite" in res.output and len(res.output.strip().splitlines()) == 1
    # one annotator set of one video missing: only that set of that video runs
    (tmp_path / "o" / "metrics.json").unlink()
    shutil.rmtree(pred / ANNOTATOR_SETS[2] / videos[1].video_id)
    calls.clear()
    res = run(*args, "--json")
    assert res.exit_code == 0 and len(calls) == len(videos[1].objects)
    assert json.loads(res.stdout)["metrics"] == report["metrics"]


def test_errors(files, tmp_path) -> None:
    res = run("--dataset", "ref-davis17", "--data-root", tmp_path / "nope", "--checkpoint", files["ck"])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and f"data root {tmp_path / 'nope'} does not exist" in res.output
    assert "meta_expressions" in res.output
    res = run("--dataset", "avsbench-s4", "--data-root", tmp_path, "--checkpoint", files["ck"])
    assert res.exit_code == 1 and "s4_meta_data.csv" in res.output
    res = run("--dataset", "davis", "--data-root", files["davis"], "--checkpoint", files["ck"])
    assert res.exit_code == 2 and "davis" in res.output  # usage error: lists the choices
    res = run("--dataset", "ref-davis17", "--data-root", files["davis"])
    assert res.exit_code == 2 and "--predictions" in res.output
    res = run("--dataset", "ref-davis17", "--data-root", files["davis"], "--checkpoint", files["ck"],
              "--predictions", tmp_path)
    assert res.exit_code == 2
    res = run("--dataset", "ref-davis17", "--data-root", files["davis"], "--predictions", tmp_path)
    assert res.exit_code == 1 and "missing" in res.output and ANNOTATOR_SETS[0] in res.output
    res = run("--dataset", "ref-davis17", "--data-root", files["davis"], "--split", "test", "--predictions", tmp_path)
    assert res.exit_code == 1 and "no split 'test'" in res.output
    assert not list(Path.cwd().glob("eval_*"))  # nothing written on errors
