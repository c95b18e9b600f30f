"""From MUTR outputs to masks: query selection, window linking, upsampling, boxes in pixels.

The official inference (architecture.md §14) picks one query per clip -- score = sigmoid(logits)
mean over T, max over K, argmax over Q -- then resizes that query's mask logits [T, h/4, w/4]
bilinearly (align_corners=False) *directly* to the original frame size, applies sigmoid and keeps
> 0.5. :func:`select_query` and :func:`upsample_logits` reproduce those steps operation for
operation, so :func:`mutr.predictor.predict_clip` equals the official per-clip output exactly.

:func:`link_query` is the streaming addition: windows of a long video overlap by a few frames,
and the query chosen in a new window must continue the object chosen in the previous one (see
:mod:`mutr.predictor` for the rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["THRESHOLD", "boxes_to_xywh", "link_query", "mask_agreement", "query_scores", "select_query",
           "upsample_logits"]

THRESHOLD = 0.5  # on the sigmoid, as the official scripts


def query_scores(pred_logits: Tensor) -> Tensor:
    """pred_logits [T, Q, K] of one clip -> [Q]: sigmoid, mean over frames, max over classes."""
    return pred_logits.float().sigmoid().mean(0).max(-1)[0]


def select_query(pred_logits: Tensor) -> tuple[int, Tensor]:
    """The official per-clip choice: (index of the best query, scores [Q])."""
    scores = query_scores(pred_logits)
    _, best = scores.max(-1)  # torch.max, as the official script (ties go to the same index)
    return int(best), scores


def mask_agreement(previous: Tensor, candidates: Tensor) -> Tensor:
    """IoU of one binary mask sequence with each query's, pooled over the frames.

    previous [T, h, w] bool; candidates [T, Q, h, w] bool -> [Q] in 0..1. Intersections and unions
    are summed over all T frames before dividing, so a frame where the object is tiny does not
    outweigh one where it is large; a query whose union with ``previous`` is empty scores 0.
    """
    prev = previous[:, None]  # [T, 1, h, w]
    inter = (prev & candidates).flatten(2).sum(-1).sum(0).float()  # [Q]
    union = (prev | candidates).flatten(2).sum(-1).sum(0).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def link_query(scores: Tensor, agreement: Tensor | None, previous_score: float | None) -> int:
    """Pick the query of a new window: ``argmax(score_q + agreement_q * previous_score)``.

    ``agreement`` [Q] is :func:`mask_agreement` on the frames the window shares with the previous
    one, ``previous_score`` the score of the query selected there. Without an overlap (first
    window, or ``overlap=0``) this is the official :func:`select_query` rule.
    """
    if agreement is None or previous_score is None:
        return int(scores.max(-1)[1])
    return int((scores + agreement.to(scores) * float(previous_score)).max(-1)[1])


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask logits [T, h, w] -> [T, H, W] at the original frame ``size`` (H, W), still logits.

    Exactly the official call: the T frames are the channels of one image, resized directly from
    the stride-4 map to the original size with bilinear, align_corners=False.
    """
    return F.interpolate(logits.float()[None], size=size, mode="bilinear", align_corners=False)[0]


def boxes_to_xywh(boxes: Tensor, width: int, height: int) -> Tensor:
    """[..., 4] (cx, cy, w, h) in 0..1 of the frame -> [..., 4] (x, y, w, h) in pixels (COCO)."""
    cx, cy, w, h = boxes.float().unbind(-1)
    return torch.stack([(cx - 0.5 * w) * width, (cy - 0.5 * h) * height, w * width, h * height], -1)
