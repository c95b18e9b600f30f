"""`mutr eval` shared between processes: 2 gloo ranks (torchrun's environment) and job-array
shards merged with --predictions give the metrics, per-video rows and prediction files of one
process, exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ranks import run_ranks
from segment_utils import make_checkpoint
from typer.testing import CliRunner

from mutr.data import write_synthetic
from mutr.distributed import Shard, World
from mutr.evaluate import open_benchmark
from mutr_cli.main import app

runner = CliRunner()
FAST = ["--size", "64", "--threads", "1"]




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-shards")
    return {"ck": make_checkpoint(d / "ck", "tiny-joint"),
            "davis": write_synthetic("davis", d / "davis", num_videos=3, num_frames=4, size=(48, 64)),
            "avs": write_synthetic("avsbench-s4", d / "avs", num_videos=5, num_frames=5, size=(48, 64))}


def run(*args) -> object:
    return runner.invoke(app, ["eval", *map(str, args), *FAST])


def predictions(out: Path) -> dict[str, bytes]:
    root = out / "predictions"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_times(report: dict) -> dict:
    drop = {"seconds", "out", "files", "predictions", "info", "predicted", "skipped"}
    return {k: v for k, v in report.items() if k not in drop}


@pytest.mark.parametrize("dataset, root", [("ref-davis17", "davis"), ("avsbench-s4", "avs")])
def test_two_processes_give_the_metrics_of_one(files, tmp_path, dataset, root):
    one = run("--dataset", dataset, "--data-root", files[root], "--checkpoint", files["ck"], "--out", "one", "--json")
    assert one.exit_code == 0, one.output

    def rank_main():
        res = runner.invoke(app, ["eval", "--dataset", dataset, "--data-root", str(files[root]), "--checkpoint",
                                  str(files["ck"]), "--out", str(tmp_path / "two"), "--json", *FAST])
        return res.exit_code, res.stdout

    (code0, out0), (code1, out1) = run_ranks(rank_main, 2)
    assert (code0, code1) == (0, 0) and out1 == ""  # rank 0 reports for both
    a, b = json.loads(one.stdout), json.loads(out0)
    assert a["metrics"] and without_times(a) == without_times(b)
    assert b["predicted"] == a["predicted"] and b["info"]["processes"] == 2
    assert predictions(tmp_path / "one") == predictions(tmp_path / "two")
    assert (tmp_path / "one" / "per_video.csv").read_bytes() == (tmp_path / "two" / "per_video.csv").read_bytes()
    saved = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert saved["metrics"] == a["metrics"]


def test_job_array_shards_merge_to_the_metrics_of_one(files, tmp_path):
    args = ("--dataset", "avsbench-s4", "--data-root", files["avs"], "--checkpoint", files["ck"])
    one = run(*args, "--out", "one", "--json")
    assert one.exit_code == 0, one.output
    done = []
    for i in range(3):
        res = run(*args, "--out", "arr", "--shard", f"{i}/3", "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["metrics"] == {} and "--predictions" in report["merge"]
        done.append(report["predicted"])
        assert not (tmp_path / "arr" / "metrics.json").exists()
    assert sorted(done) == [1, 2, 2]  # 5 clips of equal cost over 3 shares
    merged = runner.invoke(app, ["eval", "--dataset", "avsbench-s4", "--data-root", str(files["avs"]),
                                 "--predictions", "arr", "--out", "arr", "--json"])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["metrics"] == json.loads(one.stdout)["metrics"]
    assert predictions(tmp_path / "one") == predictions(tmp_path / "arr")
    rows = list(csv.DictReader(open(tmp_path / "arr" / "per_video.csv")))
    assert len(rows) == 5


def test_shares_follow_video_cost(files):
    from mutr.distributed import balanced_shares

    bench = open_benchmark("ref-davis17", files["davis"])
    costs = [bench.video_cost(v) for v in range(len(bench.video_names))]
    assert all(c == 4 * (1 + 4 * len(bench.data[v].objects)) for v, c in enumerate(costs))
    shares = balanced_shares(costs, World(shard=Shard(0, 2)).shares)
    assert sorted(i for s in shares for i in s) == [0, 1, 2]


def test_shard_errors(files, tmp_path):
    args = ("--dataset", "avsbench-s4", "--data-root", files["avs"], "--checkpoint", files["ck"], "--out", "o")
    bad = run(*args, "--shard", "3/2")
    assert bad.exit_code == 1 and "--shard 3/2" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    both = run(*args, "--shard", "0/2", "--overwrite")
    assert both.exit_code == 1 and "other shards" in both.stderr
