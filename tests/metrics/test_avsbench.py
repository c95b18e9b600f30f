"""AVSBench mIoU / F-score against the official code and against hand-computed cases.

Expected values in ``tests/fixtures/metrics/avsbench.npz`` were produced by running AVSBench's
``avs_scripts/avs_s4/utils/utility.py`` (``mask_iou``, ``Eval_Fmeasure`` with
``_eval_pr(cuda_flag=False)``) and ``pyutils.AverageMeter`` on CPU, batch by batch as
``test.py`` does (commit and command in tests/fixtures/metrics/README.md, generator
``make_fixtures.py``). All comparisons with it are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mutr.errors import InputError
from mutr.metrics import avsbench

FIXTURE = Path(__file__).parents[1] / "fixtures" / "metrics" / "avsbench.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


def test_frames_equal_reference(ref: dict[str, np.ndarray]) -> None:
    logits, target = (torch.from_numpy(ref[k]).flatten(0, 1) for k in ("logits", "target"))
    np.testing.assert_array_equal(avsbench.frame_iou(logits, target).numpy(), ref["frame_iou"])
    fscores = [avsbench.batch_fscore(x[None], y[None]) for x, y in zip(logits, target)]
    np.testing.assert_array_equal(fscores, ref["frame_fscore"])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 11])
def test_batches_equal_reference(ref: dict[str, np.ndarray], batch_size: int) -> None:
    logits, target = torch.from_numpy(ref["logits"]), torch.from_numpy(ref["target"])
    batches = [
        (avsbench.batch_miou(x.flatten(0, 1), y.flatten(0, 1)),
         avsbench.batch_fscore(x.flatten(0, 1), y.flatten(0, 1)))
        for x, y in zip(logits.split(batch_size), target.split(batch_size))
    ]
    np.testing.assert_array_equal(batches, ref[f"bs{batch_size}/batches"])
    scores = avsbench.evaluate_avsbench(logits, target, batch_size=batch_size)
    assert [scores.miou, scores.fscore] == ref[f"bs{batch_size}/dataset"].tolist()
    assert scores.num_batches == len(batches)


def test_vectorised_equals_plain_loop(ref: dict[str, np.ndarray]) -> None:
    logits, target = (torch.from_numpy(ref[k]).flatten(0, 1) for k in ("logits", "target"))
    curves, valid = avsbench.frame_f_curves(logits, target)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    # A plain frame, then: empty GT, zero logits, tiny logits, saturated logits, empty
    # prediction, full GT, tied logits (make_fixtures.py, video v frame t at 5v + t).
    for n in [0, 7, 11, 18, 25, 26, 30, 35]:
        prob, gt = torch.sigmoid(logits[n]), target[n]
        curve = torch.zeros(255)
        for i, th in enumerate(thresholds):  # the definition, one threshold at a time
            pred = (prob >= th).float()
            tp = (pred * gt).sum()
            precision, recall = tp / (pred.sum() + 1e-20), tp / (gt.sum() + 1e-20)
            curve[i] = 1.3 * precision * recall / (0.3 * precision + recall)
        torch.testing.assert_close(curves[n], curve.nan_to_num(0.0), rtol=0, atol=0)
        assert bool(valid[n]) == bool(gt.any())
        hard = prob > 0.5
        if gt.any():
            iou = (hard & (gt > 0)).sum() / ((hard | (gt > 0)).sum() + 1e-7)
        else:
            iou = (~hard & (gt == 0)).sum() / torch.tensor(gt.numel() + 1e-7, dtype=torch.float32)
        assert avsbench.frame_iou(logits[n][None], gt[None]).item() == iou.item()


# ------------------------------------------------------------------------ hand-checked cases


def square(logit_in: float, logit_out: float = -3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4×4 frame whose GT is the 2×2 square [1:3, 1:3]: (logits [1, 4, 4], target)."""
    target = torch.zeros(1, 4, 4)
    target[0, 1:3, 1:3] = 1
    return torch.where(target > 0, logit_in, logit_out), target


def frame_a() -> tuple[torch.Tensor, torch.Tensor]:
    # Probabilities: three square pixels 0.953, the fourth 0.731, one outside 0.881, rest 0.047.
    logits, target = square(3.0)
    logits[0, 2, 2], logits[0, 0, 3] = 1.0, 2.0
    return logits, target


def test_f_score_by_hand() -> None:
    # By threshold band: (0.047, 0.731] → P=4/5, R=1, F=1.04/1.24; (0.731, 0.881] → P=R=3/4,
    # F=0.75; (0.881, 0.953] → P=1, R=3/4, F=0.975/1.05=13/14; above → nothing → 0. Max 13/14.
    assert avsbench.batch_fscore(*frame_a()) == pytest.approx(13 / 14, rel=1e-6)
    # Video B is right for thresholds in (0.047, 0.622] only (square at p=0.622), so batch
    # size changes the score: alone, mean(13/14, 1); together, max of the mean curve, which
    # is (1.04/1.24 + 1) / 2 at the thresholds where B is right.
    a, b = frame_a(), square(0.5)
    logits, target = torch.stack([a[0], b[0]]), torch.stack([a[1], b[1]])
    alone = avsbench.evaluate_avsbench(logits, target, batch_size=1)
    together = avsbench.evaluate_avsbench(logits, target, batch_size=2)
    assert alone.fscore == pytest.approx((13 / 14 + 1) / 2, rel=1e-6)
    assert together.fscore == pytest.approx((1.04 / 1.24 + 1) / 2, rel=1e-6)
    assert alone.video_fscore == together.video_fscore
    assert alone.miou == together.miou == pytest.approx((4 / 5 + 1) / 2, rel=1e-6)


def test_iou_by_hand() -> None:
    logits = torch.full((1, 40, 50), -5.0)
    target = torch.zeros(1, 40, 50)
    target[0, 10:20, 10:20] = 1
    logits[0, 10:20, 12:22] = 5.0  # the square shifted 2 px: 80 / 120
    assert avsbench.batch_miou(logits, target) == pytest.approx(2 / 3, rel=1e-6)
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert avsbench.batch_miou(perfect, target) == 1.0
    assert avsbench.batch_fscore(perfect, target) == 1.0
    # Empty GT: the fraction of pixels where both are empty (1900 of 2000 here).
    empty = torch.zeros_like(target)
    assert avsbench.batch_miou(perfect, empty) == pytest.approx(0.95, rel=1e-6)
    assert avsbench.batch_miou(-perfect.abs(), empty) == 1.0
    assert avsbench.batch_fscore(perfect, empty) == 0.0  # no frame with an object: 0
    # sigmoid(0) = 0.5 and sigmoid(1e-8) rounds to 0.5 in float32: both are background.
    assert avsbench.batch_miou(torch.where(target > 0, 1e-8, -5.0), target) == 0.0
    assert avsbench.batch_miou(torch.where(target > 0, 0.0, -5.0), target) == 0.0


def test_miou_is_a_mean_over_batches() -> None:
    # Three one-frame videos with IoU 1, 0, 0: per video 1/3; in batches of 2: (1/2 + 0) / 2.
    logits, target = square(4.0)
    miss, _ = square(-4.0)
    videos, targets = torch.stack([logits, miss, miss]), torch.stack([target] * 3)
    by_one = avsbench.evaluate_avsbench(videos, targets, batch_size=1)
    by_two = avsbench.evaluate_avsbench(videos, targets, batch_size=2)
    assert by_one.miou == pytest.approx(1 / 3, rel=1e-6)
    assert (by_two.miou, by_two.num_batches) == (0.25, 2)
    assert by_one.video_miou == [1.0, 0.0, 0.0]


def test_meter_streams_and_accepts_numpy(ref: dict[str, np.ndarray]) -> None:
    meter = avsbench.AVSBenchMeter()  # the official test.sh batch size
    assert meter.batch_size == avsbench.DEFAULT_BATCH_SIZE == 4
    for k, (x, y) in enumerate(zip(ref["logits"], ref["target"])):  # numpy, video by video
        meter.update(x, y)
        if k == 5:
            partial = meter.compute()  # closes a partial batch without consuming it
            assert partial.num_batches == 2
    scores = meter.compute()
    assert [scores.miou, scores.fscore] == ref["bs4/dataset"].tolist()


def test_errors() -> None:
    with pytest.raises(InputError, match="no videos"):
        avsbench.AVSBenchMeter().compute()
    with pytest.raises(InputError, match="shape"):
        avsbench.frame_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(InputError, match=">= 1"):
        avsbench.AVSBenchMeter(batch_size=0)
