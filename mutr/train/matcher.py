"""ReferringMatcher: picks, per clip, the one query that best fits the referred object.

The official ``HungarianMatcher`` never solves an assignment: each clip has one referred object and
the query with the lowest cost wins (an argmin over Q; architecture.md §12). The cost of query q:

* class: focal-style ``α(1-p)^γ(-log(p+1e-8)) - (1-α)p^γ(-log(1-p+1e-8))`` on the target column,
  averaged over the clip's positive frames (valid and annotated) only;
* L1 and -GIoU of the box, averaged over all annotated frames, invalid ones (all-zero GT box)
  included, as the official code does;
* sigmoid focal (mean) and -dice over the whole clip's masks (annotated frames), the GT subsampled
  at [2::4, 2::4] of the padded size (see ``targets.py``).

Weights: class 2, bbox 5, giou 2, mask 2, dice 5. Auxiliary outputs are matched independently
(the criterion calls the matcher once per decoder level). Costs are computed per clip, so one
clip's choice does not depend on the rest of the batch (except through the padded mask size,
exactly as the official code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mutr.train.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from mutr.train.targets import BatchTargets, to_target_grid

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class MatcherWeights:
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0


def target_probabilities(logits: Tensor, labels: Tensor) -> Tensor:
    """logits [B, T, Q, K], labels [B, T] -> the target class's probability [B, T, Q].

    K = 1 (the binary head) always reads column 0, as ``--binary`` does."""
    prob = logits.float().sigmoid()
    if prob.shape[-1] == 1:
        return prob[..., 0]
    idx = labels[:, :, None, None].expand(*prob.shape[:3], 1)
    return prob.gather(-1, idx)[..., 0]


def class_cost(prob: Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-entry focal-style cost of calling ``prob`` a positive: pos - neg (same shape as prob)."""
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    return pos - neg


def _frame_mean(values: Tensor, weights: Tensor) -> Tensor:
    """values [B, T, Q], weights [B, T] (0/1) -> weighted mean over T [B, Q]; 0 where no frame counts."""
    w = weights.to(values.dtype)[..., None]
    return (values * w).sum(1) / w.sum(1).clamp(min=1)


def mask_costs(pred_masks: Tensor, targets: BatchTargets, use_region: bool = False,
               alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> tuple[Tensor, Tensor]:
    """(focal cost, -dice) [B, Q] between every query's masks and the clip's GT.

    pred_masks [B, T, Q, h, w] logits. Pixels count on annotated frames (and, with ``use_region``,
    only on unpadded pixels); the focal cost is their mean, the dice runs over all of them at once.
    """
    logits = to_target_grid(pred_masks.float().transpose(1, 2), targets)  # [B, Q, T, h, w]
    gt = targets.masks[:, None].expand_as(logits)
    weight = targets.has_gt.float()[:, None, :, None, None].expand_as(logits)
    if use_region and targets.region is not None:
        weight = weight * targets.region.float()[:, None]
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    p_t = prob * gt + (1 - prob) * (1 - gt)
    focal = (alpha * gt + (1 - alpha) * (1 - gt)) * ce * (1 - p_t) ** gamma
    dims = (2, 3, 4)
    focal_cost = (focal * weight).sum(dims) / weight.sum(dims).clamp(min=1)
    numerator = 2 * (prob * gt * weight).sum(dims)
    denominator = (prob * weight).sum(dims) + (gt * weight).sum(dims)
    dice = (numerator + 1) / (denominator + 1)
    return focal_cost, -dice


class ReferringMatcher:
    """Callable: ``matcher(output, targets) -> Tensor [B]`` of chosen query indices."""

    def __init__(self, weights: MatcherWeights = MatcherWeights(), *, mask_region: str = "padded") -> None:
        if mask_region not in ("padded", "valid"):
            raise ValueError(f"mask_region must be 'padded' (official) or 'valid', got {mask_region!r}")
        self.weights = weights
        self.mask_region = mask_region

    @torch.no_grad()
    def cost(self, pred_logits: Tensor, pred_boxes: Tensor, pred_masks: Tensor, targets: BatchTargets) -> Tensor:
        """Total matching cost [B, Q] (lower is better)."""
        w = self.weights
        prob = target_probabilities(pred_logits, targets.labels)  # [B, T, Q]
        c_class = _frame_mean(class_cost(prob), targets.positive)
        boxes = pred_boxes.float()
        gt = targets.boxes[:, :, None].expand_as(boxes)  # [B, T, Q, 4]
        l1 = (boxes - gt).abs().sum(-1)
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(boxes).reshape(-1, 4),
                                          box_cxcywh_to_xyxy(gt).reshape(-1, 4)).reshape(l1.shape)
        c_bbox = _frame_mean(l1, targets.has_gt)
        c_giou = _frame_mean(-giou, targets.has_gt)
        c_mask, c_dice = mask_costs(pred_masks, targets, self.mask_region == "valid")
        return (w.cost_class * c_class + w.cost_bbox * c_bbox + w.cost_giou * c_giou
                + w.cost_mask * c_mask + w.cost_dice * c_dice)

    def __call__(self, output, targets: BatchTargets) -> Tensor:
        """output: anything with ``pred_logits``/``pred_boxes``/``pred_masks`` (a ``MUTROutput``)."""
        cost = self.cost(output.pred_logits, output.pred_boxes, output.pred_masks, targets)
        return cost.argmin(-1)
