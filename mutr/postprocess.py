"""From MUTR outputs to masks: query selection, window linking, upsampling, boxes in pixels.

:func:`predict_clip` is the official inference protocol for one clip (architecture.md §14): one
forward pass, one query per clip -- score = sigmoid(logits) mean over T, max over K, argmax over
Q -- whose mask logits [T, h/4, w/4] are resized bilinearly (align_corners=False) *directly* to
the original frame size, then sigmoid (> 0.5 for a binary mask). :func:`select_query` and
:func:`upsample_logits` reproduce those steps operation for operation, so the output equals the
official per-clip output exactly; the evaluation uses it.

:func:`link_query` is the streaming addition: windows of a long video overlap by a few frames,
and the query chosen in a new window must continue the object chosen in the previous one (see
:mod:`mutr.predictor` for the rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mutr.errors import InputError
from mutr.io.transforms import INFERENCE_SIZE, preprocess

if TYPE_CHECKING:  # pragma: no cover
    from mutr.model.reference import ReferenceTokens

__all__ = ["THRESHOLD", "ClipPrediction", "boxes_to_xywh", "link_query", "mask_agreement", "predict_clip",
           "query_scores", "select_query", "upsample_logits"]

THRESHOLD = 0.5  # on the sigmoid, as the official scripts


@dataclass(frozen=True, eq=False)
class ClipPrediction:
    """The official per-clip output for one reference: ``probs`` [T, H, W] float32 at the original
    size, the selected ``query``, all query ``scores`` [Q] and the query's ``boxes`` [T, 4] xywh px."""

    probs: Tensor
    query: int
    scores: Tensor
    boxes: Tensor

    @property
    def masks(self) -> Tensor:
        return self.probs > THRESHOLD


def predict_clip(model, frames: Sequence, *, text: str | None = None, audio: np.ndarray | Tensor | None = None,
                 reference: ReferenceTokens | None = None, size: int = INFERENCE_SIZE,
                 max_size: int | None = None) -> ClipPrediction:
    """The official inference protocol for one clip and one reference (architecture.md §14).

    ``frames``: the clip's images (PIL or [H, W, 3] uint8), all of one size. Resize(size) +
    ImageNet normalisation, one forward pass over the whole clip, one query for the clip
    (sigmoid, mean over T, max over K, argmax over Q), its mask logits resized directly to the
    original size, sigmoid. The reference is ``text``, ``audio`` (log-mel examples [N, 96, 64])
    or an encoded ``reference``. Runs on the model's device; returns CPU tensors.
    """
    if sum(x is not None for x in (text, audio, reference)) != 1:
        raise InputError("predict_clip needs exactly one of text=, audio= or reference=")
    first = frames[0]
    width, height = (first.width, first.height) if hasattr(first, "width") else (first.shape[1], first.shape[0])
    device = next(model.parameters()).device
    video = preprocess(frames, size, max_size)[None].to(device)  # [1, T, 3, h, w]
    with torch.no_grad():
        if reference is None and text is not None:
            reference = model.encode_reference(texts=[text])
        elif reference is None:
            a = torch.as_tensor(np.asarray(audio, dtype=np.float32))
            a = a[:, None] if a.dim() == 3 else a  # [N, 96, 64] -> [N, 1, 96, 64]
            reference = model.encode_reference(audio=a[None].to(device))
        out = model(video, reference=reference)
        query, scores = select_query(out.pred_logits[0])
        probs = upsample_logits(out.pred_masks[0, :, query], (height, width)).sigmoid()
        boxes = boxes_to_xywh(out.pred_boxes[0, :, query], width, height)
    return ClipPrediction(probs.float().cpu(), query, scores.cpu(), boxes.cpu())


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
