"""Parameter-free sine position encodings and the legacy-nearest mask resize.

Glossary used across ``mutr.model``: B videos, T frames, Q queries per frame, L reference tokens,
C channels (d_model), H x W an input frame, h x w a feature map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _interleave_sin_cos(embed: Tensor, num_feats: int, temperature: float) -> Tensor:
    """[..., 1] positions -> [..., num_feats] as sin, cos, sin, cos ... (DETR layout)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=embed.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    angles = embed / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_2d(mask: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Position map [N, 2*num_feats, h, w] from a padding mask [N, h, w] (True = padding).

    Normalised as Deformable DETR: (cumsum - 0.5) / (last + 1e-6) * 2pi; the y block comes first.
    """
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
    x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
    pos_y = _interleave_sin_cos(y[..., None], num_feats, temperature)
    pos_x = _interleave_sin_cos(x[..., None], num_feats, temperature)
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def sine_1d(mask: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Token positions [B, L, num_feats] from a padding mask [B, L] (True = padding).

    Normalised as cumsum / (last + 1e-6) * 2pi, *without* the 2-D encoding's -0.5 offset.
    """
    x = (~mask).cumsum(1, dtype=torch.float32)
    x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
    return _interleave_sin_cos(x[..., None], num_feats, temperature)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Padding mask [N, H, W] -> [N, h, w] with PyTorch's legacy ``nearest`` (src = floor(dst*in/out)).

    The released weights were trained with exactly this rule; ``nearest-exact`` or strided slicing
    pick other rows when sizes do not divide evenly.
    """
    return F.interpolate(mask[None].float(), size=size, mode="nearest")[0].bool()
