"""The grid_sample deformable attention equals a naive per-point bilinear reference."""

from __future__ import annotations

import math

import torch

from mutr.model.deformable_attention import MSDeformAttn, multi_scale_deformable_attention


def _bilinear(feat: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample feat [D, h, w] at normalised (x, y) like grid_sample(align_corners=False, zeros):
    pixel centres sit at (i + 0.5) / size, so the continuous index is x * w - 0.5."""
    d, h, w = feat.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= xx < w and 0 <= yy < h:
                weight = (1 - abs(px - xx)) * (1 - abs(py - yy))
                out += weight * feat[:, yy, xx].double()
    return out


def naive(value, shapes, locations, weights) -> torch.Tensor:
    """Loop over every batch item, query, head, level and point (written for this test)."""
    n, s, m, d = value.shape
    _, lq, _, lv, p, _ = locations.shape
    out = torch.zeros(n, lq, m * d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                acc = torch.zeros(d, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    feat = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for pt in range(p):
                        x, y = locations[b, q, head, lvl, pt].tolist()
                        acc += weights[b, q, head, lvl, pt].item() * _bilinear(feat, x, y)
                out[b, q, head * d:(head + 1) * d] = acc
    return out


def test_matches_naive_reference() -> None:
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4), (2, 2), (1, 1)]
    n, m, d, lq, p = 2, 2, 3, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d)
    # include locations outside [0, 1] so the zero padding is exercised
    locations = torch.rand(n, lq, m, len(shapes), p, 2) * 1.4 - 0.2
    weights = torch.softmax(torch.randn(n, lq, m, len(shapes) * p), -1).view(n, lq, m, len(shapes), p)
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(fast.double(), naive(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


def test_module_offsets_scale_with_level_size_and_box() -> None:
    """2-d references move by offset/(w_l, h_l); 4-d references by offset/P * wh/2."""
    torch.manual_seed(1)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=1, n_points=1)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([2.0, -1.0]))
        attn.value_proj.weight.copy_(torch.eye(8))
        attn.value_proj.bias.zero_()
        attn.output_proj.weight.copy_(torch.eye(8))
        attn.output_proj.bias.zero_()
    h, w = 4, 8
    value = torch.randn(1, h * w, 8)
    query = torch.randn(1, 1, 8)
    ref2 = torch.tensor([[[[0.25, 0.5]]]])
    out2 = attn(query, ref2, value, [(h, w)])
    expect2 = _bilinear(value[0].T.reshape(8, h, w), 0.25 + 2 / w, 0.5 - 1 / h)
    torch.testing.assert_close(out2[0, 0].double(), expect2, atol=1e-5, rtol=1e-5)
    ref4 = torch.tensor([[[[0.25, 0.5, 0.2, 0.4]]]])
    out4 = attn(query, ref4, value, [(h, w)])
    expect4 = _bilinear(value[0].T.reshape(8, h, w), 0.25 + 2 * 0.2 * 0.5, 0.5 - 1 * 0.4 * 0.5)
    torch.testing.assert_close(out4[0, 0].double(), expect4, atol=1e-5, rtol=1e-5)
