"""DAVIS J/F against the official davis2017-evaluation and against hand-computed cases.

Expected values in ``tests/fixtures/metrics/davis.npz`` were produced by running the official
toolkit (commit and command in tests/fixtures/metrics/README.md) through
``make_fixtures.py``: ``DAVISEvaluation.evaluate`` end to end on PNGs for the global numbers
and per-object table, its ``_evaluate_(un|semi)supervised`` for per-frame series, and
``db_eval_iou`` / ``db_eval_boundary`` / ``db_statistics`` directly. All comparisons are exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mutr.errors import InputError
from mutr.metrics import davis

FIXTURE = Path(__file__).parents[1] / "fixtures" / "metrics" / "davis.npz"
STAT_COLUMNS = ["J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.mark.parametrize("task", ["unsupervised", "semi-supervised"])
def test_videos_equal_reference(ref: dict[str, np.ndarray], task: str) -> None:
    names = list(ref["videos"] if task == "unsupervised" else ref["semi"])
    videos = [davis.evaluate_video(ref[f"{n}/gt"], ref[f"{n}/pred"], name=n, task=task)
              for n in names]
    for name, video in zip(names, videos):
        n_obj = ref[f"{task}/{name}/J"].shape[0]
        assert len(video.objects) == n_obj, name
        for k, obj in enumerate(video.objects):
            np.testing.assert_array_equal(obj.j, ref[f"{task}/{name}/J"][k], err_msg=name)
            np.testing.assert_array_equal(obj.f, ref[f"{task}/{name}/F"][k], err_msg=name)
    summary = davis.summarize(videos)
    assert [summary.metrics[k] for k in davis.METRIC_NAMES] == ref[f"{task}/global"].tolist()
    assert [row["Sequence"] for row in summary.objects] == ref[f"{task}/object_names"].tolist()
    table = [[row[c] for c in STAT_COLUMNS] for row in summary.objects]
    np.testing.assert_array_equal(table, ref[f"{task}/object_stats"])


def test_matching_order_follows_proposals(ref: dict[str, np.ndarray]) -> None:
    # Labels swapped (1→3, 2→1) plus a spurious label 2: rows come in proposal order, so the
    # toolkit's "swapped-ids_1" row holds GT object 2.
    video = davis.evaluate_video(ref["swapped-ids/gt"], ref["swapped-ids/pred"], name="swapped-ids")
    assert [(o.name, o.object_id, o.proposal_id) for o in video.objects] == [
        ("swapped-ids_1", 2, 1), ("swapped-ids_2", 1, 3)]


def test_single_measures_equal_reference(ref: dict[str, np.ndarray]) -> None:
    for k in range(3):
        gt, pred, void = ref[f"pair{k}/gt"], ref[f"pair{k}/pred"], ref[f"pair{k}/void"]
        np.testing.assert_array_equal(davis.region_similarity(gt, pred, void), ref[f"pair{k}/J"])
        np.testing.assert_array_equal(davis.region_similarity(gt, pred), ref[f"pair{k}/J_novoid"])
        f = [davis.boundary_f_measure(gt, pred, void, th) for th in ref["bound_ths"]]
        np.testing.assert_array_equal(f, ref[f"pair{k}/F"])
        np.testing.assert_array_equal(davis.boundary_f_measure(gt, pred), ref[f"pair{k}/F_novoid"])


def test_statistics_equal_reference(ref: dict[str, np.ndarray]) -> None:
    for n in ref["stats_lengths"]:  # includes 256 (NaN decay) and 257, 300 (uint8 wrap-around)
        got = davis.statistics(ref[f"stats{n}/values"])
        np.testing.assert_array_equal(got, ref[f"stats{n}/MRD"], err_msg=f"length {n}")


# ------------------------------------------------------------------------ hand-checked cases


def square_video(t: int = 8, h: int = 40, w: int = 50, dx: int = 0) -> np.ndarray:
    maps = np.zeros((t, h, w), np.uint8)
    maps[:, 10:20, 10 + dx : 20 + dx] = 1
    return maps


def test_perfect_prediction() -> None:
    gt = square_video()
    gt[:, 25:30, 30:45] = 2
    summary = davis.summarize([davis.evaluate_video(gt, gt.copy(), name="v")])
    assert summary.metrics == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                               "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    assert [r["Object"] for r in summary.objects] == [1, 2]


def test_empty_prediction() -> None:
    gt = square_video(t=4)
    gt[2:] = 0  # the object leaves: both empty there, which scores J = F = 1
    (obj,) = davis.evaluate_video(gt, np.zeros_like(gt)).objects
    assert obj.j.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert obj.f.tolist() == [0.0, 0.0, 1.0, 1.0]  # no predicted edge: P = 1, R = 0 → F = 0
    assert (obj.j_mean, obj.j_recall, obj.j_decay) == (0.5, 0.5, -1.0)


def test_shifted_square() -> None:
    # 10×10 square moved 2 px right: overlap 8×10 = 80, union 120 → J = 2/3.
    # Its edge (40 px: top row y=9 x=9..19, left x=9 y=10..19, right x=19 y=10..18, bottom
    # y=19 x=10..19) moves by exactly 2 px: all within a 2 px tolerance → F = 1. Within 1 px
    # (a 5-px cross) the moved edge keeps: top x=11..20 (10), left y=10,18,19 (3), right none,
    # bottom x=12..20 (9) → P = 22/40, and R the same by symmetry → F = 0.55.
    gt, pred = square_video(t=1), square_video(t=1, dx=2)
    assert davis.region_similarity(gt[0], pred[0]) == 80 / 120
    assert davis.boundary_f_measure(gt[0], pred[0], bound_th=2) == 1.0
    assert davis.boundary_f_measure(gt[0], pred[0], bound_th=1) == 0.55
    assert davis.boundary_f_measure(gt[0], square_video(t=1, dx=25)[0], bound_th=2) == 0.0
    (obj,) = davis.evaluate_video(gt, pred).objects  # 40×50 → ceil(0.008 · 64.03) = 1 px
    assert (obj.j[0], obj.f[0]) == (2 / 3, 0.55)


def test_boundary_map_by_hand() -> None:
    square = np.zeros((4, 4), bool)
    square[1:3, 1:3] = True  # edges sit half a pixel toward the origin; border is no edge
    assert davis.boundary_map(square).astype(int).tolist() == [
        [1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    dot = np.zeros((3, 3), bool)
    dot[1, 1] = True
    assert davis.boundary_map(dot).astype(int).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert not davis.boundary_map(np.ones((5, 7), bool)).any()


@pytest.mark.parametrize(("hw", "radius"), [((480, 854), 8), ((720, 1280), 12),
                                            ((224, 224), 3), ((60, 80), 1)])
def test_boundary_radius(hw: tuple[int, int], radius: int) -> None:
    assert davis.boundary_radius(davis.BOUND_TH, *hw) == radius
    assert davis.boundary_radius(3, *hw) == 3


def test_statistics_by_hand() -> None:
    # T = 8: bins are frames [0..2], [2..4], [4..5], [5..7]; 0.5 itself is not a success.
    assert davis.statistics([1, 1, 1, 1, 0, 0, 0, 0]) == (0.5, 0.5, 1.0)
    mean, recall, decay = davis.statistics([0.5, np.nan, 1.0])
    assert (mean, recall, decay) == (0.75, 1 / 3, -0.5)


def test_void_is_ignored_only_when_unsupervised() -> None:
    gt = square_video(t=3)
    gt[:, 10:20, 20:22] = davis.VOID_LABEL
    pred = square_video(t=3)
    pred[:, 10:20, 20:22] = 1  # predicted object over the void band
    (unsup,) = davis.evaluate_video(gt, pred).objects
    (semi,) = davis.evaluate_video(gt, pred, task="semi-supervised").objects
    assert unsup.j.tolist() == [1.0, 1.0, 1.0]
    assert semi.j.tolist() == [100 / 120]  # first and last frames dropped, void = background


def test_semi_supervised_drops_first_and_last_frames() -> None:
    gt = square_video(t=5)
    pred = gt.copy()
    pred[0], pred[-1] = 0, 0
    (obj,) = davis.evaluate_video(gt, pred, task="semi-supervised").objects
    assert obj.j.tolist() == [1.0, 1.0, 1.0]


def test_object_count_comes_from_first_frame() -> None:
    gt = square_video(t=3)
    gt[1:, 30:35, 30:35] = 2  # appears after frame 0: not an object for the toolkit
    assert len(davis.evaluate_video(gt, gt).objects) == 1
    assert len(davis.evaluate_video(gt, gt, num_objects=2).objects) == 2


def test_vectorised_pairs_equal_plain_loop() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (3, 12, 15)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = davis.VOID_LABEL
    pred = rng.integers(0, 6, (3, 12, 15)).astype(np.uint8)
    void = gt == davis.VOID_LABEL
    labels = np.where(void, 0, gt)
    j, f = davis._pairwise_scores(labels, pred, ~void, 5, 3, davis.BOUND_TH)
    for p in range(5):
        for o in range(3):
            for t in range(3):
                args = (labels[t] == o + 1, pred[t] == p + 1, void[t])
                assert j[p, o, t] == davis.region_similarity(*args)
                assert f[p, o, t] == plain_boundary_f(*args, radius=1)


def plain_boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray, radius: float) -> float:
    """The definition pixel by pixel (datasets.md §2.5), without NumPy tricks or OpenCV."""
    def edges(m: np.ndarray) -> list[tuple[int, int]]:
        h, w = m.shape
        out = []
        for y in range(h):
            for x in range(w):
                nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
                if y == h - 1:
                    nbrs = [(y, x + 1)]
                if x == w - 1:
                    nbrs = [(y + 1, x)] if y < h - 1 else []
                if any(yy < h and xx < w and m[yy, xx] != m[y, x] for yy, xx in nbrs):
                    out.append((y, x))
        return out

    def near(a: tuple[int, int], bs: list[tuple[int, int]]) -> bool:
        return any(math.hypot(a[0] - b[0], a[1] - b[1]) <= radius for b in bs)

    eg, ep = edges(gt & ~void), edges(pred & ~void)
    if not eg or not ep:
        return 1.0 if not eg and not ep else 0.0
    precision = sum(near(a, eg) for a in ep) / len(ep)
    recall = sum(near(a, ep) for a in eg) / len(eg)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_errors_name_the_fix() -> None:
    gt = square_video(t=3)
    too_many = gt.copy()
    too_many[:, 0, :21] = np.arange(1, 22)
    with pytest.raises(InputError, match="20"):
        davis.evaluate_video(gt, too_many)
    with pytest.raises(InputError, match="semi-supervised"):
        davis.evaluate_video(gt, gt * 2, task="semi-supervised")
    with pytest.raises(InputError, match="shape"):
        davis.evaluate_video(gt, gt[:, :-1])
    assert isinstance(davis.evaluate_video(list(gt), list(gt)), davis.VideoResult)
