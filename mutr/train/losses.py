"""SetCriterion: the official MUTR/ReferFormer losses for one referred object per clip (§13).

With q* the query the matcher picks for a clip and N = ``num_boxes`` (positive frames in the
global batch: all-reduced mean over processes, clamped to >= 1):

* ``loss_ce``   sigmoid focal (α .25, γ 2) over every (frame, query, class) entry of annotated
  frames; the target is 1 at (positive frame, q*, label) and 0 elsewhere; summed, / N.
* ``loss_bbox`` Σ over annotated frames of |box(q*) - GT|₁, / N;
* ``loss_giou`` Σ over annotated frames of 1 - GIoU(box(q*), GT), / N. Both include *invalid*
  annotated frames, whose GT box is all zeros (official behaviour, §18.8).
* ``loss_mask`` per clip, the mean sigmoid focal loss over its annotated frames' pixels on the
  [2::4, 2::4] GT grid (or the full-resolution one, ``prepare_targets(full_resolution=True)``);
  summed over clips, / N;
* ``loss_dice`` per clip 1 - (2·Σpg + 1) / (Σp + Σg + 1) over the same pixels; summed, / N.

``mask_region="padded"`` (default) reproduces the official behaviour of running the mask terms
over the whole padded grid (§19.5: one clip's loss depends on the size of the others in its
batch); ``"valid"`` restricts them to unpadded pixels. Frames without annotation (``has_gt``
False, AVSBench S4 train frames 2..5) carry no loss at all. Every decoder level in
``aux_outputs`` adds ``<name>_<i>`` terms, matched again independently, with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mutr.train.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from mutr.train.matcher import FOCAL_ALPHA, FOCAL_GAMMA, ReferringMatcher
from mutr.train.targets import BatchTargets, to_target_grid

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


@dataclass(frozen=True)
class LossWeights:
    loss_ce: float = 2.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_mask: float = 2.0
    loss_dice: float = 5.0


def sigmoid_focal(logits: Tensor, targets: Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Element-wise focal loss (RetinaNet form, as the official ``sigmoid_focal_loss`` before reduction)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def global_num_boxes(targets: BatchTargets) -> Tensor:
    """Positive frames in the batch, averaged over processes (all-reduce / world size), >= 1."""
    n = targets.num_boxes().to(targets.masks.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1)


class SetCriterion(torch.nn.Module):
    """``criterion(output, targets) -> dict`` of unweighted losses (incl. aux ``_i``) plus ``indices``.

    ``weighted_total(losses)`` gives the scalar to back-propagate.
    """

    def __init__(self, matcher: ReferringMatcher | None = None, weights: LossWeights = LossWeights(), *,
                 mask_region: str = "padded", aux_loss: bool = True) -> None:
        super().__init__()
        if mask_region not in ("padded", "valid"):
            raise ValueError(f"mask_region must be 'padded' (official) or 'valid', got {mask_region!r}")
        self.matcher = matcher or ReferringMatcher(mask_region=mask_region)
        self.weights = weights
        self.mask_region = mask_region
        self.aux_loss = aux_loss

    # -------------------------------------------------------------- single level
    def level_losses(self, output, targets: BatchTargets, indices: Tensor, num_boxes: Tensor) -> dict[str, Tensor]:
        """Losses of one decoder level given the chosen query per clip (indices [B])."""
        b, t, q, k = output.pred_logits.shape
        ar = torch.arange(b, device=indices.device)
        gt_frames = targets.has_gt.float()  # [B, T]

        # class: focal over annotated frames' (query, class) entries; positive at (valid t, q*, label)
        logits = output.pred_logits.float()
        onehot = torch.zeros_like(logits)
        label_col = targets.labels if k > 1 else torch.zeros_like(targets.labels)
        pos = targets.positive.float()  # [B, T]
        onehot[ar[:, None], torch.arange(t, device=logits.device)[None], indices[:, None], label_col] = pos
        ce = (sigmoid_focal(logits, onehot) * gt_frames[:, :, None, None]).sum()

        # boxes of the chosen query on annotated frames, invalid (zero) GT boxes included
        boxes = output.pred_boxes.float()[ar, :, indices]  # [B, T, 4]
        l1 = (boxes - targets.boxes).abs().sum(-1)
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(boxes).reshape(-1, 4),
                                          box_cxcywh_to_xyxy(targets.boxes).reshape(-1, 4)).reshape(b, t)
        bbox = (l1 * gt_frames).sum()
        giou_loss = ((1 - giou) * gt_frames).sum()

        # masks of the chosen query: per clip mean focal and dice over the counted pixels
        masks = to_target_grid(output.pred_masks.float()[ar, :, indices], targets)  # [B, T, h, w]
        weight = gt_frames[:, :, None, None].expand_as(masks)
        if self.mask_region == "valid" and targets.region is not None:
            weight = weight * targets.region.float()
        per_clip_pixels = weight.sum((1, 2, 3))
        counted = per_clip_pixels > 0
        focal = (sigmoid_focal(masks, targets.masks) * weight).sum((1, 2, 3)) / per_clip_pixels.clamp(min=1)
        prob = masks.sigmoid()
        dice = 1 - (2 * (prob * targets.masks * weight).sum((1, 2, 3)) + 1) / (
            (prob * weight).sum((1, 2, 3)) + (targets.masks * weight).sum((1, 2, 3)) + 1)
        dice = torch.where(counted, dice, torch.zeros_like(dice))  # a clip with no annotated frame
        return {
            "loss_ce": ce / num_boxes,
            "loss_bbox": bbox / num_boxes,
            "loss_giou": giou_loss / num_boxes,
            "loss_mask": focal.sum() / num_boxes,
            "loss_dice": dice.sum() / num_boxes,
        }

    # -------------------------------------------------------------- all levels
    def forward(self, output, targets: BatchTargets, num_boxes: Tensor | float | None = None) -> dict[str, Tensor]:
        """output: a ``MUTROutput`` (train mode, with ``aux_outputs``); returns unweighted losses.

        ``num_boxes``: pass it when a batch is split into sub-batches (one per reference
        modality) so that every part is normalised by the whole batch's count.
        """
        if num_boxes is None:
            num_boxes = global_num_boxes(targets)
        num_boxes = torch.as_tensor(num_boxes, dtype=torch.float32, device=targets.masks.device).clamp(min=1)
        indices = self.matcher(output, targets)
        losses = self.level_losses(output, targets, indices, num_boxes)
        if self.aux_loss:
            for i, aux in enumerate(getattr(output, "aux_outputs", None) or []):
                aux_indices = self.matcher(aux, targets)
                for name, value in self.level_losses(aux, targets, aux_indices, num_boxes).items():
                    losses[f"{name}_{i}"] = value
        return losses

    def weight_of(self, name: str) -> float:
        base = name if name in LOSS_NAMES else name.rsplit("_", 1)[0]
        return float(getattr(self.weights, base))

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(self.weight_of(k) * v for k, v in losses.items())
