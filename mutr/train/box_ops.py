"""Box conversions and (generalised) IoU with the official epsilons (architecture.md §19.4).

Boxes are ``[..., 4]``: ``cxcywh`` (centre, size) or ``xyxy`` (corners), normalised to the unpadded
frame. The ``+1e-6`` terms make an all-zero box (an invalid frame's target) give finite values:
IoU(0-box, b) = 1e-6 / (area(b) + 1e-6), and GIoU against it stays in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def box_area(boxes: Tensor) -> Tensor:
    """xyxy [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy [N, 4] x [M, 4] -> (iou [N, M], union [N, M]).

    iou = (inter + 1e-6) / (union + 1e-6), as the official ``box_iou``.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return (inter + EPS) / (union + EPS), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU of xyxy [N, 4] x [M, 4] -> [N, M]: iou - ((area - union) + 1e-6) / (area + 1e-6),
    where ``area`` is the smallest enclosing box. Degenerate (zero) boxes are allowed: the official
    loss feeds invalid frames' all-zero targets through here."""
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - ((area - union) + EPS) / (area + EPS)


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise GIoU of xyxy [N, 4] and [N, 4] -> [N] (the diagonal of the pairwise one)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = (inter + EPS) / (union + EPS)
    lt_c = torch.min(boxes1[:, :2], boxes2[:, :2])
    rb_c = torch.max(boxes1[:, 2:], boxes2[:, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area = wh_c[:, 0] * wh_c[:, 1]
    return iou - ((area - union) + EPS) / (area + EPS)


def masks_to_boxes(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Binary masks [N, H, W] -> (normalised cxcywh boxes [N, 4], valid [N] bool).

    The official YTVOS rule (§19.6): inclusive max indices (x1 = last mask column, no +1), valid only
    if x1 > x0 and y1 > y0 strictly; invalid boxes are zeros. Normalised by (W, H).
    """
    n, h, w = masks.shape
    m = masks.bool()
    rows, cols = m.any(2), m.any(1)  # [N, H], [N, W]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    big = float(max(h, w) + 1)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1.0).amax(1)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1.0).amax(1)
    valid = (x1 > x0) & (y1 > y0)
    xyxy = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], -1)
    boxes = torch.where(valid[:, None], box_xyxy_to_cxcywh(xyxy), torch.zeros_like(xyxy))
    return boxes, valid
