"""Multi-scale deformable attention in pure PyTorch (``grid_sample``; no compiled op).

Each query looks at ``n_points`` sampled locations per head and level around its reference point,
with learned offsets and softmax weights (Deformable DETR). Layouts follow the released weights:
offsets viewed as [heads, levels, points, (x, y)], one softmax per head over levels*points, value
split into contiguous per-head channel blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Bilinear sampling (zero padding, align_corners=False) and weighted sum.

    value [N, S, M, D] (S = sum of h*w over levels, M heads, D channels per head);
    locations [N, Lq, M, Lv, P, 2] in [0, 1] (x, y); weights [N, Lq, M, Lv, P] -> [N, Lq, M*D].
    """
    n, _, m, d = value.shape
    _, lq, _, lv, p, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, per_level in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[level]
        # [N, h*w, M, D] -> [N*M, D, h, w]
        v = per_level.flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, Lv, P] -> [N*M, D, Lq, Lv*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    w = weights.transpose(1, 2).reshape(n * m, 1, lq, lv * p)
    out = (stacked * w).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2)


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of 8 directions, i+1 steps out per point."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        value_in: Tensor,
        shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query [N, Lq, C]; reference [N, Lq, Lv, 2 or 4] (normalised, incl. padding);
        value_in [N, S, C]; padding_mask [N, S] True = padding -> [N, Lq, C]."""
        n, lq, _ = query.shape
        value = self.value_proj(value_in)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, value.shape[1], self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (w_l, h_l)
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            # 4-d box references: offsets scale with half the box size
            locations = (reference[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference[:, :, None, :, None, 2:] * 0.5)
        out = multi_scale_deformable_attention(value, shapes, locations, weights)
        return self.output_proj(out)
