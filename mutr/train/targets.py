"""Training targets in the layout the matcher and the criterion read.

One referred object per clip (the official setting): per clip ``masks`` [T, H, W], ``boxes``
[T, 4] (cx, cy, w, h normalised to the unpadded frame), ``valid`` [T] (the object is visible and
its box non-degenerate), ``labels`` [T] (class ids; ignored by the binary head) and ``has_gt``
[T] (the frame is annotated at all). AVSBench S4 train annotates only the first frame: its other
frames have ``has_gt`` False and carry no class, box or mask loss, nor any matching cost (a
documented departure from the official text-only code, which has every frame annotated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mutr.errors import InputError
from mutr.postprocess import upsample_logits

MASK_STRIDE = 4  # the mask head predicts at 1/4 of the padded input


@dataclass
class BatchTargets:
    """Stacked targets of B clips at the prediction grid (h = H/4, w = W/4), or at full resolution.

    ``masks`` [B, T, h, w] float 0/1: the GT padded to the batch's padded size and subsampled at
    [2::4, 2::4] (not interpolated: official, §19.5), or [B, T, H, W] (``full_resolution``);
    ``boxes`` [B, T, 4]; ``valid``, ``has_gt`` [B, T] bool; ``labels`` [B, T] long; ``region``
    [B, T, h, w] (or [B, T, H, W]) bool, True on unpadded pixels (used only with
    ``mask_region="valid"``), or None when the batch has no padding mask.
    """

    masks: Tensor
    boxes: Tensor
    valid: Tensor
    has_gt: Tensor
    labels: Tensor
    region: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.masks.shape[0]

    @property
    def num_frames(self) -> int:
        return self.masks.shape[1]

    @property
    def positive(self) -> Tensor:
        """[B, T] frames where the referred object is a positive: valid and annotated."""
        return self.valid & self.has_gt

    def num_boxes(self) -> Tensor:
        """Local count of positive frames (the criterion's normaliser before the all-reduce)."""
        return self.positive.sum().to(torch.float32)

    def select(self, index: Tensor | Sequence[int]) -> "BatchTargets":
        """Targets of a subset of clips (for modality sub-batches)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.masks.device)
        return BatchTargets(self.masks[idx], self.boxes[idx], self.valid[idx], self.has_gt[idx],
                            self.labels[idx], None if self.region is None else self.region[idx])


def to_target_grid(pred_masks: Tensor, targets: BatchTargets) -> Tensor:
    """Mask logits [..., h, w] on the targets' grid: as they are for stride-4 targets (official),
    upsampled 4x for full-resolution ones by inference's own ``upsample_logits``, so the loss
    sees what the user gets."""
    h, w = pred_masks.shape[-2:]
    big_h, big_w = targets.masks.shape[-2:]
    if (big_h, big_w) == (h, w):
        return pred_masks
    if (big_h, big_w) != (h * MASK_STRIDE, w * MASK_STRIDE):
        raise ValueError(f"pred_masks are {h}x{w} but the GT grid is {big_h}x{big_w}; "
                         "pad frames to a multiple of 32")
    up = upsample_logits(pred_masks.reshape(-1, h, w), (big_h, big_w))  # bilinear is per channel
    return up.view(*pred_masks.shape[:-2], big_h, big_w)


def prepare_targets(
    targets: Sequence[Mapping[str, Tensor]],
    padded_size: tuple[int, int],
    padding_mask: Tensor | None = None,
    device: torch.device | str | None = None,
    full_resolution: bool = False,
) -> BatchTargets:
    """Per-clip target dicts -> ``BatchTargets`` on the H/4 x W/4 prediction grid.

    ``padded_size`` (H, W) is the size of the batch's video tensor (a multiple of 32 after collate);
    each clip's masks [T, h_i, w_i] are zero-padded at the bottom/right to it, as the official
    ``nested_tensor_from_tensor_list(size_divisibility=32)``. ``padding_mask`` [B, T, H, W] (True =
    padding) gives ``region``. Missing ``valid`` means "box non-degenerate"; missing ``labels``
    zeros; missing ``has_gt`` all True. ``full_resolution`` keeps masks and region at H x W (the
    mask terms then compare 4x-upsampled logits, ``to_target_grid``) instead of the official
    [2::4] subsample, whose grid sits half a pixel off the upsampled logits and caps a perfect
    stride-4 prediction of 20-px shapes at J ~.93 (.98 on the full grid).
    """
    if not targets:
        raise InputError("the batch has no targets; every clip needs masks, boxes and valid")
    big_h, big_w = padded_size
    if big_h % MASK_STRIDE or big_w % MASK_STRIDE:
        raise InputError(f"the padded frame size {big_h}x{big_w} must be a multiple of {MASK_STRIDE} "
                         "(collate pads to a multiple of 32)")
    start, stride = (0, 1) if full_resolution else (MASK_STRIDE // 2, MASK_STRIDE)
    masks, boxes, valid, has_gt, labels = [], [], [], [], []
    for i, tgt in enumerate(targets):
        for key in ("masks", "boxes"):
            if key not in tgt:
                raise InputError(f"target {i} has no {key!r}; each clip needs masks [T,H,W] and boxes [T,4]")
        m = torch.as_tensor(tgt["masks"], device=device)
        if m.dim() != 3:
            raise InputError(f"target {i}: masks must be [T, H, W], got {tuple(m.shape)}")
        t, h, w = m.shape
        if h > big_h or w > big_w:
            raise InputError(f"target {i}: masks of {h}x{w} are larger than the padded frames {big_h}x{big_w}")
        m = F.pad(m.to(torch.float32), (0, big_w - w, 0, big_h - h))
        masks.append((m[:, start::stride, start::stride] > 0.5).to(torch.float32))
        b = torch.as_tensor(tgt["boxes"], device=device, dtype=torch.float32).reshape(t, 4)
        boxes.append(b)
        if "valid" in tgt:
            valid.append(torch.as_tensor(tgt["valid"], device=device).reshape(t).bool())
        else:
            valid.append((b[:, 2] > 0) & (b[:, 3] > 0))
        has_gt.append(torch.as_tensor(tgt["has_gt"], device=device).reshape(t).bool() if "has_gt" in tgt
                      else torch.ones(t, dtype=torch.bool, device=m.device))
        labels.append(torch.as_tensor(tgt["labels"], device=device).reshape(-1).long().expand(t)
                      if "labels" in tgt else torch.zeros(t, dtype=torch.long, device=m.device))
    if len({x.shape[0] for x in masks}) != 1:
        raise InputError("all clips of a batch need the same number of frames T")
    region = None
    if padding_mask is not None:
        region = ~padding_mask.to(masks[0].device)[:, :, start::stride, start::stride]
    return BatchTargets(torch.stack(masks), torch.stack(boxes), torch.stack(valid), torch.stack(has_gt),
                        torch.stack(labels), region)
