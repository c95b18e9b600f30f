"""Matcher and criterion against values worked out by hand, plus invariants.

Set-up shared by the hand-worked cases (B = 1 clip, T = 2 frames, Q = 2 queries, K = 1):
the padded frames are 8x8, so the GT grid is rows/cols [2::4] = {2, 6} -> 2x2 per frame.

* GT: frame 0 valid, box (cx, cy, w, h) = (.5, .5, .2, .2), mask = only pixel (2, 2) -> grid
  [[1, 0], [0, 0]]; frame 1 invalid: box all zeros, empty mask.
* logits: frame 0: q0 = 0 (p = .5), q1 = ln 3 (p = .75); frame 1: both 0 (p = .5).
* boxes: q0 = (.5, .5, .2, .2) on both frames; q1 = (.6, .5, .2, .2) on both frames.
* mask logits: q0 = 0 everywhere (p = .5); q1 = +ln 3 at grid (0, 0) of frame 0 and -ln 3
  elsewhere (p = .75 on the object pixel, .25 on the 7 others).

Focal values used below (α = .25, γ = 2, ln 2 = .693147, ln(4/3) = .287682, ln 4 = 1.386294):
  positive, p = .5 : .25 * .5^2  * ln 2      = .0433217
  negative, p = .5 : .75 * .5^2  * ln 2      = .1299651
  positive, p = .75: .25 * .25^2 * ln(4/3)   = .0044950
  negative, p = .25: .75 * .25^2 * ln(4/3)   = .0134851
"""

from __future__ import annotations

import math

import pytest
import torch

from mutr.model.mutr import MUTROutput
from mutr.train.losses import SetCriterion
from mutr.train.matcher import ReferringMatcher
from mutr.train.targets import prepare_targets

LN3 = math.log(3.0)
POS_HALF = 0.25 * 0.5**2 * math.log(2)  # .0433217
NEG_HALF = 0.75 * 0.5**2 * math.log(2)  # .1299651
POS_34 = 0.25 * 0.25**2 * math.log(4 / 3)  # .0044950
NEG_14 = 0.75 * 0.25**2 * math.log(4 / 3)  # .0134851


def _case(has_gt=(True, True)):
    logits = torch.tensor([[[0.0], [LN3]], [[0.0], [0.0]]])[None]  # [1, T, Q, 1]
    boxes = torch.tensor([[[.5, .5, .2, .2], [.6, .5, .2, .2]]] * 2)[None]  # [1, T, Q, 4]
    masks = torch.zeros(1, 2, 2, 2, 2)  # [B, T, Q, h, w]
    masks[0, :, 1] = -LN3
    masks[0, 0, 1, 0, 0] = LN3
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 2, 2] = True
    target = {"masks": gt, "boxes": torch.tensor([[.5, .5, .2, .2], [0, 0, 0, 0]]),
              "valid": torch.tensor([True, False]), "labels": torch.zeros(2, dtype=torch.long),
              "has_gt": torch.tensor(has_gt)}
    return MUTROutput(logits, boxes, masks), prepare_targets([target], (8, 8))


def _giou_vs_zero(x0, y0, x1, y1):
    """GIoU of box (x0, y0, x1, y1) against the all-zero box, with the official epsilons:
    inter = 0, union = area, iou = 1e-6 / (area + 1e-6), enclosing = (0, 0, x1, y1)."""
    area = (x1 - x0) * (y1 - y0)
    enclosing = x1 * y1
    return 1e-6 / (area + 1e-6) - (enclosing - area + 1e-6) / (enclosing + 1e-6)


def test_matcher_cost_by_hand():
    out, tgt = _case()
    cost = ReferringMatcher().cost(out.pred_logits, out.pred_boxes, out.pred_masks, tgt)

    # class: frame 0 only (frame 1 is invalid): pos - neg cost.
    #   q0, p = .5 : .25*.25*ln2 - .75*.25*ln2            = -.0866434
    #   q1, p = .75: .25*.0625*ln(4/3) - .75*.5625*ln 4   = .0044950 - .5848429 = -.5803479
    c_class = [0.25 * 0.25 * math.log(2) - 0.75 * 0.25 * math.log(2),
               0.25 * 0.0625 * math.log(4 / 3) - 0.75 * 0.5625 * math.log(4)]
    # L1, averaged over BOTH frames (the invalid zero box counts):
    #   q0: frame 0: 0; frame 1: .5+.5+.2+.2 = 1.4      -> .7
    #   q1: frame 0: .1; frame 1: .6+.5+.2+.2 = 1.5     -> .8
    c_bbox = [0.7, 0.8]
    # GIoU, averaged over both frames (cost = -GIoU):
    #   q0 frame 0: identical boxes, area .04: iou = 1, enclosing = union -> 1 - 1e-6/(.04+1e-6)
    #   q1 frame 0: xyxy (.5,.4,.7,.6) vs (.4,.4,.6,.6): inter .1*.2 = .02, union .06,
    #       enclosing (.4,.4,.7,.6) = .06 -> (.02+1e-6)/(.06+1e-6) - (0+1e-6)/(.06+1e-6)
    #   frame 1 (vs the zero box): q0 (.4,.4,.6,.6), q1 (.5,.4,.7,.6)
    g0 = [1 - 1e-6 / (0.04 + 1e-6), (0.02 + 1e-6) / (0.06 + 1e-6) - 1e-6 / (0.06 + 1e-6)]
    g1 = [_giou_vs_zero(.4, .4, .6, .6), _giou_vs_zero(.5, .4, .7, .6)]
    c_giou = [-(g0[q] + g1[q]) / 2 for q in range(2)]
    # mask focal, mean over the 8 grid pixels of both frames (1 positive, 7 negatives):
    #   q0: (.0433217 + 7 * .1299651) / 8 = .1191353
    #   q1: (.0044950 + 7 * .0134851) / 8 = .0123576
    c_mask = [(POS_HALF + 7 * NEG_HALF) / 8, (POS_34 + 7 * NEG_14) / 8]
    # dice over the clip: (2*inter + 1) / (sum_p + sum_g + 1), cost = -dice
    #   q0: inter .5, sum_p 8*.5 = 4, sum_g 1        -> 2 / 6   = .3333
    #   q1: inter .75, sum_p .75 + 7*.25 = 2.5       -> 2.5/4.5 = .5556
    c_dice = [-2 / 6, -2.5 / 4.5]
    expected = [2 * c_class[q] + 5 * c_bbox[q] + 2 * c_giou[q] + 2 * c_mask[q] + 5 * c_dice[q] for q in range(2)]
    # GIoU values: q0 frame 0 .999975, frame 1 -.888864; q1 frame 0 .333328, frame 1 -.904737.
    # Weighted terms (class, bbox, giou, mask, dice):
    #   q0: -.17329 + 3.5 - .11111 + .23827 - 1.66667 = 1.78721
    #   q1: -1.16070 + 4.0 + .57141 + .02472 - 2.77778 = .65766   -> q1 is chosen
    torch.testing.assert_close(cost[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert ReferringMatcher()(out, tgt).tolist() == [1]


def test_criterion_by_hand():
    out, tgt = _case()
    losses = SetCriterion(aux_loss=False)(out, tgt)
    n = 1.0  # num_boxes: one valid frame
    # loss_ce: focal over all 4 (frame, query) entries of the annotated frames; target 1 only at
    #   (frame 0, q1): neg(p=.5) + pos(p=.75) + 2 * neg(p=.5) on frame 1
    ce = NEG_HALF + POS_34 + 2 * NEG_HALF
    # loss_bbox: L1 of q1 on both frames: .1 + 1.5
    bbox = 0.1 + 1.5
    # loss_giou: sum of 1 - GIoU of q1 on both frames
    giou = (1 - ((0.02 + 1e-6) / (0.06 + 1e-6) - 1e-6 / (0.06 + 1e-6))) + (1 - _giou_vs_zero(.5, .4, .7, .6))
    # loss_mask: mean focal of q1 over the clip's 8 pixels; loss_dice: 1 - 2.5/4.5
    mask = (POS_34 + 7 * NEG_14) / 8
    dice = 1 - 2.5 / 4.5
    for name, value in [("loss_ce", ce), ("loss_bbox", bbox), ("loss_giou", giou), ("loss_mask", mask),
                        ("loss_dice", dice)]:
        torch.testing.assert_close(losses[name], torch.tensor(value / n), rtol=1e-5, atol=1e-6, msg=name)


def test_has_gt_masks_frames_out():
    # frame 1 not annotated: it drops out of every cost and loss; num_boxes stays 1.
    out, tgt = _case(has_gt=(True, False))
    cost = ReferringMatcher().cost(out.pred_logits, out.pred_boxes, out.pred_masks, tgt)
    # class as before (frame 0); L1: q0 0, q1 .1; GIoU: frame 0 only;
    # mask focal: mean over the 4 pixels of frame 0 (1 positive, 3 negatives);
    # dice: q0 (2*.5+1)/(2+1+1) = .5, q1 (1.5+1)/(.75+.75+1+1) = 2.5/3.5
    c_class = [0.25 * 0.25 * math.log(2) - 0.75 * 0.25 * math.log(2),
               0.25 * 0.0625 * math.log(4 / 3) - 0.75 * 0.5625 * math.log(4)]
    g0 = [1 - 1e-6 / (0.04 + 1e-6), (0.02 + 1e-6) / (0.06 + 1e-6) - 1e-6 / (0.06 + 1e-6)]
    c_mask = [(POS_HALF + 3 * NEG_HALF) / 4, (POS_34 + 3 * NEG_14) / 4]
    c_dice = [-0.5, -2.5 / 3.5]
    expected = [2 * c_class[q] + 5 * [0.0, 0.1][q] - 2 * g0[q] + 2 * c_mask[q] + 5 * c_dice[q] for q in range(2)]
    torch.testing.assert_close(cost[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)

    losses = SetCriterion(aux_loss=False)(out, tgt)
    # ce: frame 0 entries only: neg(p=.5) on q0 + pos(p=.75) on q1
    torch.testing.assert_close(losses["loss_ce"], torch.tensor(NEG_HALF + POS_34), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_mask"], torch.tensor((POS_34 + 3 * NEG_14) / 4), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(1 - 2.5 / 3.5), rtol=1e-5, atol=1e-6)


def test_unannotated_frames_get_no_gradient():
    torch.manual_seed(0)
    b, t, q = 2, 5, 3
    logits = torch.randn(b, t, q, 1, requires_grad=True)
    boxes = torch.rand(b, t, q, 4).mul(0.5).add(0.2).requires_grad_(True)
    masks = torch.randn(b, t, q, 8, 8, requires_grad=True)
    targets = []
    for _ in range(b):
        m = torch.rand(t, 32, 32) > 0.6
        targets.append({"masks": m, "boxes": torch.rand(t, 4) * 0.5 + 0.2, "valid": torch.ones(t, dtype=torch.bool),
                        "has_gt": torch.tensor([True] + [False] * (t - 1))})  # AVSBench S4 train
    out = MUTROutput(logits, boxes, masks)
    crit = SetCriterion()
    tgt = prepare_targets(targets, (32, 32))
    crit.weighted_total(crit(out, tgt)).backward()
    for g in (logits.grad, boxes.grad, masks.grad):
        assert g[:, 1:].abs().max() == 0
        assert g[:, 0].abs().max() > 0


def _random_batch(b, t=3, q=5, k=1, size=(32, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = MUTROutput(torch.randn(b, t, q, k, generator=g), torch.rand(b, t, q, 4, generator=g) * 0.5 + 0.2,
                     torch.randn(b, t, q, h // 4, w // 4, generator=g))
    targets = []
    for _ in range(b):
        valid = torch.rand(t, generator=g) > 0.3
        bx = torch.rand(t, 4, generator=g) * 0.5 + 0.2
        targets.append({"masks": torch.rand(t, h, w, generator=g) > 0.7, "boxes": bx * valid[:, None],
                        "valid": valid, "labels": torch.randint(0, k, (t,), generator=g)})
    return out, targets


@pytest.mark.parametrize("k", [1, 3])
def test_matcher_invariant_to_batch(k):
    out, targets = _random_batch(6, k=k, seed=k)
    matcher = ReferringMatcher()
    together = matcher(out, prepare_targets(targets, (32, 48)))
    for i in range(6):
        alone = MUTROutput(out.pred_logits[i:i + 1], out.pred_boxes[i:i + 1], out.pred_masks[i:i + 1])
        assert matcher(alone, prepare_targets(targets[i:i + 1], (32, 48))).item() == together[i].item()


def test_aux_levels_are_matched_independently():
    out, targets = _random_batch(2, seed=3)
    aux, _ = _random_batch(2, seed=4)
    out.aux_outputs = [aux]
    tgt = prepare_targets(targets, (32, 48))
    crit = SetCriterion()
    losses = crit(out, tgt)
    assert set(losses) == {f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
                           for s in ("", "_0")}
    alone = crit(aux, tgt)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        torch.testing.assert_close(losses[f"{name}_0"], alone[name])
    # weighted total: ce 2, bbox 5, giou 2, mask 2, dice 5 on both levels
    total = sum(w * (losses[n] + losses[n + "_0"]) for n, w in
                [("loss_ce", 2), ("loss_bbox", 5), ("loss_giou", 2), ("loss_mask", 2), ("loss_dice", 5)])
    torch.testing.assert_close(crit.weighted_total(losses), total)


def _official_losses(out, targets, start=2, stride=4):
    """A transcription of the official loop-style matcher + SetCriterion (ReferFormer/MUTR) for
    the binary head, all frames annotated: the reference these tests hold the vectorised code to."""
    from mutr.train.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

    b, t, q, _ = out.pred_logits.shape
    H = max(x["masks"].shape[1] for x in targets)
    W = max(x["masks"].shape[2] for x in targets)
    H, W = -(-H // 32) * 32, -(-W // 32) * 32
    gts = []
    for x in targets:
        m = torch.zeros(t, H, W)
        m[:, :x["masks"].shape[1], :x["masks"].shape[2]] = x["masks"].float()
        gts.append(m[:, start::stride, start::stride])
    indices = []
    for i in range(b):
        prob = out.pred_logits[i].sigmoid()
        cls = []
        for f in range(t):
            if not targets[i]["valid"][f]:
                continue
            p = prob[f][:, 0:1]
            neg = 0.75 * p**2 * -(1 - p + 1e-8).log()
            pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
            cls.append(pos - neg)
        c_class = torch.stack(cls).mean(0)
        c_bbox = torch.stack([torch.cdist(out.pred_boxes[i, f], targets[i]["boxes"][f][None], p=1)
                              for f in range(t)]).mean(0)
        c_giou = torch.stack([-generalized_box_iou(box_cxcywh_to_xyxy(out.pred_boxes[i, f]),
                                                   box_cxcywh_to_xyxy(targets[i]["boxes"][f][None]))
                              for f in range(t)]).mean(0)
        x = out.pred_masks[i].transpose(0, 1).flatten(1)  # [q, thw]
        y = gts[i].flatten()[None].expand_as(x)
        pr = x.sigmoid()
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = pr * y + (1 - pr) * (1 - y)
        c_mask = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).mean(1, keepdim=True)
        c_dice = -((2 * (pr * y).sum(1) + 1) / (pr.sum(1) + y.sum(1) + 1))[:, None]
        c = 5 * c_bbox + 2 * c_class + 2 * c_giou + 2 * c_mask + 5 * c_dice
        indices.append(int(c.argmin()))
    num_boxes = max(float(sum(x["valid"].sum() for x in targets)), 1.0)
    logits = out.pred_logits.reshape(b, t * q, 1)
    onehot = torch.zeros_like(logits)
    for i, j in enumerate(indices):
        for f in torch.nonzero(targets[i]["valid"]).flatten().tolist():
            onehot[i, f * q + j, 0] = 1
    pr = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = pr * onehot + (1 - pr) * (1 - onehot)
    focal = (0.25 * onehot + 0.75 * (1 - onehot)) * ce * (1 - p_t) ** 2
    loss_ce = focal.mean(1).sum() / num_boxes * (t * q)
    src = torch.stack([out.pred_boxes[i, :, j] for i, j in enumerate(indices)]).flatten(0, 1)
    tb = torch.cat([x["boxes"] for x in targets])
    loss_bbox = (src - tb).abs().sum() / num_boxes
    loss_giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tb)))).sum() / num_boxes
    sm = torch.stack([out.pred_masks[i, :, j] for i, j in enumerate(indices)]).flatten(1)
    tm = torch.stack(gts).flatten(1)
    pr = sm.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(sm, tm, reduction="none")
    p_t = pr * tm + (1 - pr) * (1 - tm)
    loss_mask = ((0.25 * tm + 0.75 * (1 - tm)) * ce * (1 - p_t) ** 2).mean(1).sum() / num_boxes
    loss_dice = (1 - (2 * (pr * tm).sum(1) + 1) / (pr.sum(1) + tm.sum(1) + 1)).sum() / num_boxes
    return indices, dict(loss_ce=loss_ce, loss_bbox=loss_bbox, loss_giou=loss_giou, loss_mask=loss_mask,
                         loss_dice=loss_dice)


def test_equals_official_transcription_with_padding():
    # two clips of different sizes: the smaller one's GT is padded (official mask padding, §19.5)
    out, targets = _random_batch(2, t=4, size=(64, 64), seed=7)
    targets[1]["masks"] = targets[1]["masks"][:, :40, :50]
    indices, expected = _official_losses(out, targets)
    tgt = prepare_targets(targets, (64, 64))
    assert ReferringMatcher()(out, tgt).tolist() == indices
    losses = SetCriterion(aux_loss=False)(out, tgt)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("full", [False, True])
def test_valid_region_option_ignores_padding(full: bool):
    out, targets = _random_batch(1, t=2, size=(32, 32), seed=5)
    pad = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    pad[..., 16:] = True  # right half is padding
    base = prepare_targets(targets, (32, 32), pad, full_resolution=full)
    crit = SetCriterion(aux_loss=False, mask_region="valid")
    a = crit(out, base)
    # change predictions only where they reach padding alone: grid cols 4..7 on the stride-4
    # grid; upsampled, col 4 still blends into pixel 15 (source x = (15 + .5) / 4 - .5), so 5..7
    out.pred_masks[..., 5 if full else 4:] = 50.0
    b = crit(out, base)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(a[name], b[name])
    official = SetCriterion(aux_loss=False)(out, base)
    assert not torch.allclose(official["loss_mask"], a["loss_mask"])


def _band_case():
    """One clip, T = 1, Q = 1, 8x8 frames whose GT is the top two rows (16 of 64 pixels); mask
    logits 0 everywhere (p = .5). The official [2::4] grid samples rows 2 and 6: no positive."""
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :2] = True
    target = {"masks": gt, "boxes": torch.tensor([[.5, .125, 1.0, .25]])}
    out = MUTROutput(torch.zeros(1, 1, 1, 1), torch.tensor([[[[.5, .125, 1.0, .25]]]]), torch.zeros(1, 1, 1, 2, 2))
    return out, target


def test_full_resolution_mask_terms_by_hand():
    out, target = _band_case()
    sub = SetCriterion(aux_loss=False)(out, prepare_targets([target], (8, 8)))
    full = SetCriterion(aux_loss=False)(out, prepare_targets([target], (8, 8), full_resolution=True))
    # stride 4: 4 negatives at p = .5 -> focal mean NEG_HALF; dice 1 - 1 / (4 * .5 + 0 + 1)
    assert sub["loss_mask"].item() == pytest.approx(NEG_HALF, rel=1e-6)
    assert sub["loss_dice"].item() == pytest.approx(1 - 1 / 3, rel=1e-6)
    # full: the upsampled logits are 0 on all 64 pixels, 16 positive
    assert full["loss_mask"].item() == pytest.approx(0.25 * POS_HALF + 0.75 * NEG_HALF, rel=1e-6)
    assert full["loss_dice"].item() == pytest.approx(1 - (2 * 0.5 * 16 + 1) / (64 * 0.5 + 16 + 1), rel=1e-6)
    # class and box terms do not depend on the mask grid
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert full[name].item() == sub[name].item()


def test_full_resolution_compares_the_logits_inference_upsamples():
    """The mask terms see exactly what mutr.postprocess.upsample_logits gives the user."""
    from mutr.postprocess import upsample_logits
    from mutr.train.targets import to_target_grid

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 5, 6, generator=g)  # [B, T, Q, h, w]
    tgt = prepare_targets([{"masks": torch.zeros(3, 20, 24), "boxes": torch.rand(3, 4)}], (20, 24),
                          full_resolution=True)
    up = to_target_grid(logits, tgt)
    assert up.shape == (1, 3, 2, 20, 24)
    for q in range(2):
        torch.testing.assert_close(up[0, :, q], upsample_logits(logits[0, :, q], (20, 24)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of 32"):
        to_target_grid(logits[..., :4, :], tgt)

