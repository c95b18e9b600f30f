"""mutr.evaluate: the official protocols, the --predictions layouts, scoring, resume, errors.

Model runs use a tiny random-weight joint checkpoint (text and audio) on synthetic data in every
real layout (48x64 frames, model input 64 px), so each run takes well under a second. Scores are
checked against the official toolkits' numbers stored in tests/fixtures/metrics (run end to end
through the on-disk layouts), against ``mutr.metrics`` on the same arrays, and against the
values a perfect prediction must get.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_utils import make_checkpoint

from mutr import MUTR, MUTRConfig
from mutr.data import ANNOTATOR_SETS, AVSBenchEval, RefDavisEval, RefYouTubeVOSEval, write_synthetic
from mutr.data.synthetic_layouts import palette
from mutr.errors import InputError, OutputExistsError
from mutr.evaluate import ClipRunner, EvalProgress, evaluate, open_benchmark
from mutr.evaluate import davis as davis_eval
from mutr.evaluate.avsbench import png_to_logits, probability_png
from mutr.metrics.avsbench import AVSBenchMeter
from mutr.metrics.davis import METRIC_NAMES, evaluate_video, summarize
from mutr.postprocess import predict_clip

SIZE = 64
FIXTURES = Path(__file__).parent / "fixtures" / "metrics"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> MUTR:
    return MUTR.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("ck") / "joint", "tiny-joint")).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {layout: write_synthetic(layout, d / layout, num_videos=n, num_frames=5, size=(48, 64))
            for layout, n in (("davis", 2), ("ytvos", 3), ("avsbench-s4", 3), ("avsbench-ms3", 2))}


def save_palette(labels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(palette())
    im.save(path)


def write_davis_predictions(root: Path, maps: dict[str, dict[str, np.ndarray]]) -> Path:
    """maps[set][video] = [T, H, W] labels -> root/<set>/<video>/<%05d>.png (the documented layout)."""
    for s, videos in maps.items():
        for video, labels in videos.items():
            for t, lab in enumerate(labels):
                save_palette(lab, root / s / video / f"{t:05d}.png")
    return root


def davis_gt(root: Path) -> dict[str, np.ndarray]:
    return {v.video_id: v.load_gt() for v in RefDavisEval(root)}


# ----------------------------------------------------------------------------- the model protocol
def test_clip_runner_equals_predict_clip(model, data) -> None:
    runner = ClipRunner(model, device="cpu", size=SIZE)
    video = RefDavisEval(data["davis"])[0]
    frames = video.load_frames()
    clip = runner.encode_video(frames)  # one backbone pass, decoded per reference
    for _, text in video.expressions_of_set(0)[:2]:
        expected = predict_clip(model, frames, text=text, size=SIZE).probs
        assert torch.equal(runner.mask_logits(clip, runner.text(text)).sigmoid(), expected)
    avs = AVSBenchEval(data["avsbench-s4"], "s4", "test")[0]
    expected = predict_clip(model, avs.frames, audio=avs.audio, size=SIZE).probs
    got = runner.mask_logits(runner.encode_video(avs.frames), runner.audio(avs.audio))
    assert got.shape == (5, 48, 64) and torch.equal(got.sigmoid(), expected)
    assert runner.calls == 3


def test_label_maps_equal_the_official_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    probs = [torch.rand(3, 7, 9, generator=g) for _ in range(4)]
    probs[1][0, :2] = probs[2][0, :2] = 0.8  # ties go to the lower label
    probs[3][1, :3] = 0.5  # exactly 0.5 is kept
    probs[0][2] = 0.1  # a probability equal to the background after thresholding is dropped anyway
    # inference_davis.py: probabilities < 0.5 -> 0, a 0.1 background plane first, argmax.
    stacked = torch.stack(probs)
    stacked[stacked < 0.5] = 0.0
    official = torch.argmax(torch.cat([0.1 * torch.ones(1, 3, 7, 9), stacked]), dim=0).to(torch.uint8)
    assert torch.equal(davis_eval.label_maps(probs), official)


def test_davis_clips_have_their_own_query_selection(model, data, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(davis_eval, "CLIP_LENGTH", 3)  # 5 frames -> clips [0, 3) and [3, 5)
    result = evaluate("ref-davis17", data["davis"], model, out=tmp_path / "o", size=SIZE, device="cpu")
    video = RefDavisEval(data["davis"])[1]
    frames = video.load_frames()
    for a in (0, 3):
        expected = []
        for start in (0, 3):
            probs = [predict_clip(model, frames[start : start + 3], text=t, size=SIZE).probs
                     for _, t in video.expressions_of_set(a)]
            expected.append(davis_eval.label_maps(probs).numpy())
        folder = Path(result.predictions) / ANNOTATOR_SETS[a] / video.video_id
        written = np.stack([np.asarray(Image.open(folder / f"{t:05d}.png")) for t in range(5)])
        np.testing.assert_array_equal(written, np.concatenate(expected))
        assert Image.open(folder / "00000.png").mode == "P"
    n_objects = sum(len(v.objects) for v in RefDavisEval(data["davis"]))
    assert result.model_calls == n_objects * 4 * 2 and result.predicted == 2 * 4


# ----------------------------------------------------------------------------- Ref-DAVIS17 scores
def test_davis_ground_truth_scores_perfect(data, tmp_path) -> None:
    gt = davis_gt(data["davis"])
    pred = write_davis_predictions(tmp_path / "gt", {s: gt for s in ANNOTATOR_SETS})
    result = evaluate("ref-davis17", data["davis"], predictions=pred, out=tmp_path / "o")
    for metrics in (result.metrics, *result.annotator_sets.values()):
        assert {k: metrics[k] for k in METRIC_NAMES} == {
            "J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
            "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    assert list(result.annotator_sets) == list(ANNOTATOR_SETS)


def test_davis_perturbations_score_as_mutr_metrics(data, tmp_path) -> None:
    gt = davis_gt(data["davis"])
    shifted = {v: np.roll(g, 3, axis=2) for v, g in gt.items()}  # every mask 3 px to the right
    empty = {v: g.copy() for v, g in gt.items()}
    for g in empty.values():
        g[2] = 0  # one frame predicts nothing
    missing = {v: np.where(g == g.max(), 0, g) for v, g in gt.items()}  # the highest-id object is never found
    maps = dict(zip(ANNOTATOR_SETS, (shifted, empty, missing, gt)))
    result = evaluate("ref-davis17", data["davis"], predictions=write_davis_predictions(tmp_path / "p", maps),
                      out=tmp_path / "o")
    for s, pred in maps.items():
        expected = summarize([evaluate_video(gt[v], pred[v], name=v) for v in gt]).metrics
        assert result.annotator_sets[s] == expected, s
    assert result.annotator_sets["Davis17_annot2_full_video"]["J&F-Mean"] == 1.0
    assert all(result.annotator_sets[s]["J-Mean"] < 1.0 for s in ANNOTATOR_SETS[:3])
    for k in METRIC_NAMES:  # the paper number: the mean of the four evaluator runs
        assert result.metrics[k] == pytest.approx(np.mean([result.annotator_sets[s][k] for s in ANNOTATOR_SETS]),
                                                  abs=1e-15)
    rows = list(csv.DictReader(open(tmp_path / "o" / "per_video.csv")))
    assert [r["video"] for r in rows] == list(gt)
    objects = list(csv.DictReader(open(tmp_path / "o" / "per_object.csv")))
    assert len(objects) == 4 * sum(int(g[0].max()) for g in gt.values())


def test_davis_equals_the_official_toolkit(tmp_path) -> None:
    """The toolkit's global numbers (tests/fixtures/metrics/davis.npz), through PNGs on disk."""
    with np.load(FIXTURES / "davis.npz") as f:
        ref = dict(f)
    root = tmp_path / "ref-davis"
    (root / "valid" / "JPEGImages").mkdir(parents=True)
    videos = {}
    for name in ref["videos"]:
        gt = ref[f"{name}/gt"]
        for t, lab in enumerate(gt):
            save_palette(lab, root / "valid" / "Annotations" / name / f"{t:05d}.png")
        exps = {str(i): {"exp": f"object {i}", "obj_id": "1"} for i in range(4)}
        videos[name] = {"expressions": exps, "frames": [f"{t:05d}" for t in range(len(gt))]}
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    (root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    pred = write_davis_predictions(tmp_path / "pred" / "valid", {
        s: {n: ref[f"{n}/pred"] for n in ref["videos"]} for s in ANNOTATOR_SETS})
    # the official script's output folder (<out>/valid/<set>/...) is accepted as it is
    result = evaluate("ref-davis17", root, predictions=tmp_path / "pred", out=tmp_path / "o")
    official = ref["unsupervised/global"].tolist()
    assert [result.metrics[k] for k in METRIC_NAMES] == official
    for s in ANNOTATOR_SETS:
        assert [result.annotator_sets[s][k] for k in METRIC_NAMES] == official
    rows = [r for r in csv.DictReader(open(tmp_path / "o" / "per_object.csv")) if r["annotator_set"] == s]
    assert [r["Sequence"] for r in rows] == ref["unsupervised/object_names"].tolist()
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]["J&F-Mean"] == official[0]


# ----------------------------------------------------------------------------- AVSBench scores
def _ms3_layout(root: Path, masks: np.ndarray) -> list[str]:
    """A scoring-only MS3 layout (CSV + gt_masks) for masks [V, 5, H, W]."""
    names = [f"clip{i:02d}" for i in range(len(masks))]
    base = root / "Multi-sources"
    for name, video in zip(names, masks):
        for t, m in enumerate(video):
            p = base / "ms3_data" / "gt_masks" / "test" / name / f"{name}_{t + 1}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((m > 0).astype(np.uint8) * 255).save(p)
    (base / "ms3_meta_data.csv").write_text("video_id,split\n" + "".join(f"{n},test\n" for n in names))
    return names


@pytest.mark.parametrize("batch_size", [1, 4])
def test_avsbench_equals_the_official_test_script(tmp_path, batch_size) -> None:
    """AVSBench's utility.py + test.py batching (tests/fixtures/metrics/avsbench.npz), through .npy files."""
    with np.load(FIXTURES / "avsbench.npz") as f:
        ref = dict(f)
    names = _ms3_layout(tmp_path / "avs", ref["target"])
    for name, logits in zip(names, ref["logits"]):
        (tmp_path / "pred").mkdir(exist_ok=True)
        np.save(tmp_path / "pred" / f"{name}.npy", logits)
    result = evaluate("avsbench-ms3", tmp_path / "avs", predictions=tmp_path / "pred", out=tmp_path / "o",
                      metric_batch_size=batch_size)
    assert [result.metrics["mIoU"], result.metrics["F-score"]] == ref[f"bs{batch_size}/dataset"].tolist()
    assert result.metrics["J&F"] == (result.metrics["mIoU"] + result.metrics["F-score"]) / 2
    assert result.info["metric_batches"] == -(-len(names) // batch_size)


def test_avsbench_png_probabilities(tmp_path) -> None:
    """8-bit PNGs score as their values: mIoU on v >= 128 (= the logits' mIoU), F on v / 255."""
    with np.load(FIXTURES / "avsbench.npz") as f:
        logits, target = f["logits"], f["target"]
    names = _ms3_layout(tmp_path / "avs", target)
    pngs = []
    for name, video in zip(names, logits):
        values = np.stack([probability_png(torch.from_numpy(x)) for x in video])
        pngs.append(values)
        for t, v in enumerate(values):
            (tmp_path / "pred" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(v).save(tmp_path / "pred" / name / f"{name}_{t + 1}.png")
    result = evaluate("avsbench-ms3", tmp_path / "avs", predictions=tmp_path / "pred", out=tmp_path / "o")
    meter = AVSBenchMeter(4)
    for v, y in zip(pngs, target):
        assert np.array_equal(torch.sigmoid(torch.from_numpy(png_to_logits(v))).numpy() > 0.5, v >= 128)
        meter.update(torch.from_numpy(png_to_logits(v)), torch.from_numpy(y))
    assert [result.metrics["mIoU"], result.metrics["F-score"]] == [meter.compute().miou, meter.compute().fscore]
    official = np.load(FIXTURES / "avsbench.npz")["bs4/dataset"]
    assert result.metrics["mIoU"] == official[0]  # p = 0.5 stays background (127)
    assert result.metrics["F-score"] == pytest.approx(official[1], abs=2e-3)  # quantised to 1/255


@pytest.mark.parametrize("layout", ["avsbench-s4", "avsbench-ms3"])
def test_avsbench_ground_truth_scores_perfect(data, tmp_path, layout) -> None:
    subset = layout.split("-")[1]
    root = tmp_path / "avs"
    shutil.copytree(data[layout], root)
    files = AVSBenchEval(root, subset, "test").files
    for v in files.videos:  # the GT mask PNGs themselves as probability PNGs (0 and 255)
        for t in range(5):
            dest = tmp_path / "pred" / v.name / f"{v.name}_{t + 1}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(files.mask(v, t), dest)
    result = evaluate(layout, root, predictions=tmp_path / "pred", out=tmp_path / "o", metric_batch_size=1)
    assert (result.metrics["mIoU"], result.metrics["F-score"]) == (1.0, 1.0)
    # An empty GT video predicted empty: IoU scores the true-negative fraction (1), the F-score of
    # a batch whose frames all have empty GT is 0 (AVSBench's Eval_Fmeasure).
    v = files.videos[0]
    for t in range(5):
        im = Image.open(files.mask(v, t))
        blank = Image.fromarray(np.zeros_like(np.asarray(im)))
        if im.mode == "P":
            blank.putpalette(im.getpalette())
        blank.save(files.mask(v, t))
        blank.save(tmp_path / "pred" / v.name / f"{v.name}_{t + 1}.png")
    n = len(files.videos)
    result = evaluate(layout, root, predictions=tmp_path / "pred", out=tmp_path / "o", metric_batch_size=1,
                      overwrite=True)
    assert result.metrics["mIoU"] == 1.0 and result.metrics["F-score"] == pytest.approx((n - 1) / n, abs=1e-15)
    assert [r["F-score"] for r in result.videos] == [0.0] + [1.0] * (n - 1)
    result = evaluate(layout, root, predictions=tmp_path / "pred", out=tmp_path / "o", metric_batch_size=n,
                      overwrite=True)
    assert result.metrics["F-score"] == 1.0  # one batch: empty-GT frames are skipped inside it


# ----------------------------------------------------------------------------- Ref-YouTube-VOS
def test_ytvos_submission_zip(model, data, tmp_path) -> None:
    result = evaluate("ref-youtube-vos", data["ytvos"], model, out=tmp_path / "o", size=SIZE, device="cpu")
    assert result.metrics == {} and "plot" not in result.files
    videos = RefYouTubeVOSEval(data["ytvos"])
    expected = {f"Annotations/{v.video_id}/{e}/{f}.png" for v in videos for e in v.expressions for f in v.frame_names}
    assert len(videos) == 2  # the last synthetic valid video is listed as "test" and left out
    with zipfile.ZipFile(result.files["submission"]) as zf:
        assert set(zf.namelist()) == expected and len(zf.namelist()) == len(expected)
        v = videos[0]
        name = f"Annotations/{v.video_id}/0/{v.frame_names[0]}.png"
        with zf.open(name) as fh:
            im = Image.open(fh)
            im.load()
    assert im.mode == "L" and im.size == (64, 48) and set(np.unique(np.asarray(im))) <= {0, 255}
    frames = v.load_frames()  # the whole video in one forward pass, one query for the video
    official = predict_clip(model, frames, text=v.expressions["0"], size=SIZE).masks.numpy()
    stored = Path(result.predictions) / "Annotations" / v.video_id / "0"
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(stored / f"{f}.png")) for f in v.frame_names]),
                                  official.astype(np.uint8) * 255)
    again = evaluate("ref-youtube-vos", data["ytvos"], predictions=tmp_path / "o", out=tmp_path / "again")
    with zipfile.ZipFile(again.files["submission"]) as zf:
        assert set(zf.namelist()) == expected


# ----------------------------------------------------------------------------- resume
class Stop(Exception):
    pass


def test_interrupted_run_resumes_where_it_stopped(model, data, tmp_path) -> None:
    out = tmp_path / "o"

    def stop_after_first_video(event: EvalProgress) -> None:
        if event.stage == "predict" and event.done == 1:
            raise Stop

    with pytest.raises(Stop):
        evaluate("ref-davis17", data["davis"], model, out=out, size=SIZE, device="cpu",
                 progress=stop_after_first_video)
    videos = RefDavisEval(data["davis"])
    assert all((out / "predictions" / s / videos[0].video_id).is_dir() for s in ANNOTATOR_SETS)
    assert not any((out / "predictions" / s / videos[1].video_id).exists() for s in ANNOTATOR_SETS)
    assert not (out / "metrics.json").exists()
    # a unit killed half-way leaves only a hidden temporary, cleaned up on resume
    stale = out / "predictions" / ANNOTATOR_SETS[0] / f".tmp-{videos[1].video_id}.deadbeef"
    stale.mkdir()
    (stale / "00000.png").write_bytes(b"partial")
    events: list[EvalProgress] = []
    resumed = evaluate("ref-davis17", data["davis"], model, out=out, size=SIZE, device="cpu",
                       progress=events.append)
    assert (resumed.skipped, resumed.predicted) == (4, 4)
    assert resumed.model_calls == 4 * len(videos[1].objects)  # only the second video ran
    assert [(e.done, e.skipped) for e in events if e.stage == "predict"] == [(1, True), (2, False)]
    assert not stale.exists()
    fresh = evaluate("ref-davis17", data["davis"], model, out=tmp_path / "fresh", size=SIZE, device="cpu")
    assert resumed.metrics == fresh.metrics


def test_avsbench_resume_and_formats(model, data, tmp_path) -> None:
    out = tmp_path / "o"
    first = evaluate("avsbench-s4", data["avsbench-s4"], model, out=out, size=SIZE, device="cpu", avs_format="png")
    names = [v.name for v in AVSBenchEval(data["avsbench-s4"], "s4", "test").files.videos]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted(names)
    assert first.model_calls == len(names)
    shutil.rmtree(out / "predictions" / names[1])
    (out / "metrics.json").unlink()
    second = evaluate("avsbench-s4", data["avsbench-s4"], model, out=out, size=SIZE, device="cpu", avs_format="png")
    assert (second.predicted, second.skipped, second.model_calls) == (1, len(names) - 1, 1)
    assert second.metrics == first.metrics
    # npy logits give the metrics of the model's logits themselves
    exact = evaluate("avsbench-s4", data["avsbench-s4"], model, out=tmp_path / "npy", size=SIZE, device="cpu")
    runner, meter = ClipRunner(model, device="cpu", size=SIZE), AVSBenchMeter(4)
    for clip in AVSBenchEval(data["avsbench-s4"], "s4", "test"):
        meter.update(runner.mask_logits(runner.encode_video(clip.frames), runner.audio(clip.audio)),
                     torch.from_numpy(clip.masks))
    assert [exact.metrics["mIoU"], exact.metrics["F-score"]] == [meter.compute().miou, meter.compute().fscore]
    assert np.load(tmp_path / "npy" / "predictions" / f"{names[0]}.npy").dtype == np.float32


def test_output_guards(model, data, tmp_path) -> None:
    out = tmp_path / "o"
    evaluate("avsbench-ms3", data["avsbench-ms3"], model, out=out, size=SIZE, device="cpu")
    with pytest.raises(OutputExistsError, match="finished evaluation.*--overwrite"):
        evaluate("avsbench-ms3", data["avsbench-ms3"], model, out=out, size=SIZE, device="cpu")
    (out / "metrics.json").unlink()
    with pytest.raises(OutputExistsError, match="different run.*size 64 -> 96"):
        evaluate("avsbench-ms3", data["avsbench-ms3"], model, out=out, size=96, device="cpu")
    again = evaluate("avsbench-ms3", data["avsbench-ms3"], model, out=out, size=96, device="cpu", overwrite=True)
    assert again.skipped == 0 and again.predicted == 2
    with pytest.raises(OutputExistsError, match="already exists"):  # reports of a re-score
        evaluate("avsbench-ms3", data["avsbench-ms3"], predictions=out, out=out)


# ----------------------------------------------------------------------------- errors
def test_errors(model, data, tmp_path) -> None:
    with pytest.raises(InputError, match=f"data root {tmp_path / 'nowhere'} does not exist.*meta_expressions"):
        open_benchmark("ref-davis17", tmp_path / "nowhere")
    with pytest.raises(InputError, match="missing .*ms3_meta_data.csv"):
        open_benchmark("avsbench-ms3", tmp_path)
    with pytest.raises(InputError, match="unknown dataset 'davis'"):
        open_benchmark("davis", data["davis"])
    with pytest.raises(InputError, match="no split 'val'.*valid"):
        open_benchmark("ref-davis17", data["davis"], "val")
    with pytest.raises(InputError, match="exactly one"):
        evaluate("ref-davis17", data["davis"], out=tmp_path / "o")
    with pytest.raises(InputError, match="missing .*Davis17_annot1.*syn_valid_0000"):
        evaluate("ref-davis17", data["davis"], predictions=tmp_path, out=tmp_path / "o")
    audio_only = MUTR(MUTRConfig.preset("tiny-joint"))
    audio_only.text_encoder = None
    with pytest.raises(InputError, match="no text encoder.*text-referred"):
        evaluate("ref-davis17", data["davis"], audio_only, out=tmp_path / "o", size=SIZE, device="cpu")
    assert not (tmp_path / "o").exists()  # checked before anything is written
