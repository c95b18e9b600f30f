"""Prediction heads: class and box per decoder level, and the dynamic mask head.

The mask head is a "controller" MLP that turns each video query into the weights of three tiny 1x1
convolutions (CondInst); they run on the mask features plus two relative-coordinate channels.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import HeadsConfig
from mutr.model import kernels


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _clones(module: nn.Module, n: int, share: bool) -> nn.ModuleList:
    """Box refinement trains one head per decoder level; without it one head is shared."""
    return nn.ModuleList([module] * n if share else [copy.deepcopy(module) for _ in range(n)])


class DynamicMaskHead(nn.Module):
    """Controller MLP + dynamic 1x1 convs: video query [.., C] -> mask logits on the /4 grid."""

    def __init__(self, cfg: HeadsConfig, d_model: int) -> None:
        super().__init__()
        ch, cin = cfg.dynamic_mask_channels, cfg.mask_dim + (2 if cfg.rel_coord else 0)
        self.rel_coord = cfg.rel_coord
        self.channels = ch
        # Flat parameter vector: all weights (row-major [out, in]) first, then all biases.
        self.weight_nums = [cin * ch] + [ch * ch] * (cfg.controller_layers - 2) + [ch]
        self.bias_nums = [ch] * (cfg.controller_layers - 1) + [1]
        self.controller = MLP(d_model, d_model, sum(self.weight_nums) + sum(self.bias_nums), 3)
        for layer in self.controller.layers:
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, queries: Tensor, mask_features: Tensor, reference_xy: Tensor, image_sizes: Tensor,
                projection: nn.Conv2d | None = None) -> Tensor:
        """queries [B, T, Q, C]; mask_features [B, T, D, h, w]; reference_xy [B, T, Q, 2] (0..1);
        image_sizes [B, 2] unpadded (h, w) in pixels -> logits [B, T, Q, h, w].

        ``projection``: the pixel decoder's last convolution, not yet applied to ``mask_features``
        (then [B, T, C, h, w], its input); the inference path folds it into the first layer."""
        b, t, q, _ = queries.shape
        h, w = mask_features.shape[-2:]
        params = self.controller(queries).reshape(b * t * q, -1)
        if kernels.inference(queries, mask_features, params) and len(self.weight_nums) >= 2:
            return self._per_frame(params, mask_features, reference_xy, image_sizes, projection).reshape(
                b, t, q, h, w)
        if projection is not None:
            mask_features = projection(mask_features.flatten(0, 1)).unflatten(0, (b, t))
        # Under autocast the decoder runs the heads in float32 (autocast off) on low-precision
        # mask features: the dynamic convolutions need one dtype, the parameters'.
        mask_features = mask_features.to(params.dtype)
        d = mask_features.shape[2]
        feats = mask_features[:, :, None].expand(b, t, q, d, h, w)
        if self.rel_coord:
            # Offsets from the query's reference point to each /4 cell centre (4x+2, 4y+2), in
            # pixels of the unpadded input, *not* normalised (as trained).
            scale = image_sizes.flip(-1).to(reference_xy.dtype)  # (w, h)
            ref_px = reference_xy * scale[:, None, None, :]
            ys = torch.arange(h, device=queries.device, dtype=reference_xy.dtype) * 4 + 2
            xs = torch.arange(w, device=queries.device, dtype=reference_xy.dtype) * 4 + 2
            dx = ref_px[..., 0, None, None] - xs[None, None, None, None, :]
            dy = ref_px[..., 1, None, None] - ys[None, None, None, :, None]
            rel = torch.stack([dx.expand(b, t, q, h, w), dy.expand(b, t, q, h, w)], dim=3)
            feats = torch.cat([feats, rel.to(feats.dtype)], dim=3)
        x = feats.reshape(1, -1, h, w)
        n = b * t * q
        splits = list(torch.split(params, self.weight_nums + self.bias_nums, dim=1))
        layers = len(self.weight_nums)
        for i in range(layers):
            out_ch = self.channels if i < layers - 1 else 1
            weight = splits[i].reshape(n * out_ch, -1, 1, 1)
            bias = splits[layers + i].reshape(n * out_ch)
            x = F.conv2d(x, weight, bias, groups=n)
            if i < layers - 1:
                x = F.relu(x)
        return x.reshape(b, t, q, h, w)

    def _per_frame(self, params: Tensor, mask_features: Tensor, reference_xy: Tensor, image_sizes: Tensor,
                   projection: nn.Conv2d | None) -> Tensor:
        """The same three dynamic 1x1 convolutions without the [B*T*Q, D + 2, h, w] copy of the
        mask features: the first layer is one batched product per frame over the shared features
        (or, with ``projection``, one convolution per frame, see ``_folded``) plus the (per-query,
        separable) relative-coordinate terms; the rest are tiny products. Positions and the first
        layer's sum are float32 (pixel offsets reach the image size)."""
        b, t, _, h, w = mask_features.shape
        q = reference_xy.shape[2]
        ch = self.channels
        n = b * t
        splits = torch.split(params, self.weight_nums + self.bias_nums, dim=1)
        layers = len(self.weight_nums)
        w1 = splits[0].reshape(n, q * ch, -1)  # [BT, Q*8, D(+2)]
        f32 = torch.promote_types(mask_features.dtype, torch.float32)  # float32, or float64 if given
        if projection is None:
            d = mask_features.shape[2]
            feats = mask_features.reshape(n, d, h * w)
            x = torch.bmm(w1[:, :, :d].to(feats.dtype), feats).to(f32)  # [BT, Q*8, hw]
        else:
            d = projection.out_channels
            x = _folded(w1[:, :, :d], mask_features.flatten(0, 1), projection, f32)
        x = x.view(n, q, ch, h, w)
        if self.rel_coord:
            scale = image_sizes.flip(-1).to(f32)  # (w, h)
            ref_px = reference_xy.to(f32) * scale[:, None, None, :]  # [B, T, Q, 2]
            ys = torch.arange(h, device=x.device, dtype=f32) * 4 + 2
            xs = torch.arange(w, device=x.device, dtype=f32) * 4 + 2
            dx = (ref_px[..., 0, None] - xs).reshape(n, q, 1, 1, w)
            dy = (ref_px[..., 1, None] - ys).reshape(n, q, 1, h, 1)
            wr = w1[:, :, d:].to(f32).reshape(n, q, ch, 1, 1, 2)
            x += wr[..., 0] * dx
            x += wr[..., 1] * dy
        x += splits[layers].to(f32).reshape(n, q, ch, 1, 1)
        x = x.relu_().view(n * q, ch, h * w)
        for i in range(1, layers):
            out_ch = ch if i < layers - 1 else 1
            weight = splits[i].to(f32).reshape(n * q, out_ch, -1)
            bias = splits[layers + i].to(f32).reshape(n * q, out_ch, 1)
            x = torch.baddbmm(bias, weight, x)
            if i < layers - 1:
                x = x.relu_()
        return x


def _folded(w: Tensor, feats: Tensor, projection: nn.Conv2d, dtype: torch.dtype) -> Tensor:
    """``w`` [N, K, D] times ``projection(feats)`` [N, D, h, w] per frame, without the D-channel
    map: a 1x1 layer after a convolution is one convolution with K output channels, its weights
    composed in float64. For the pixel decoder's 256 -> 256 3x3 projection and K = Q * 8 = 40 that
    is ~6x fewer products than the projection alone (bench: 195 -> 39 ms at 5x360x640 in bf16).
    The convolution runs in ``feats``' dtype, the bias and the result in ``dtype``: [N, K, h, w]."""
    n, k, d = w.shape
    if projection.groups != 1 or projection.out_channels != d:
        raise ValueError("only an ungrouped projection to the mask head's input channels folds")
    w64 = w.double()
    kernel = (w64 @ projection.weight.double().reshape(d, -1)).reshape(n, k, *projection.weight.shape[1:])
    out = torch.empty(n, k, *feats.shape[-2:], dtype=dtype, device=feats.device)
    for i in range(n):
        out[i] = F.conv2d(feats[i:i + 1], kernel[i].to(feats.dtype), None, projection.stride,
                          projection.padding, projection.dilation)[0]
    if projection.bias is not None:
        out += (w64 @ projection.bias.double()).to(dtype)[..., None, None]
    return out


class PredictionHeads(nn.Module):
    """Per-level class heads (on MTI's video queries) and box heads (on per-frame decoder output)."""

    def __init__(self, cfg: HeadsConfig, d_model: int, num_levels: int) -> None:
        super().__init__()
        class_embed = nn.Linear(d_model, cfg.num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        bbox_embed = MLP(d_model, d_model, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        share = not cfg.with_box_refine
        self.class_embed = _clones(class_embed, num_levels, share)
        self.bbox_embed = _clones(bbox_embed, num_levels, share)
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.mask_head = DynamicMaskHead(cfg, d_model)
