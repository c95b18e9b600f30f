"""Multi-scale deformable attention in pure PyTorch (no compiled op).

Each query looks at ``n_points`` sampled locations per head and level around its reference point,
with learned offsets and softmax weights (Deformable DETR). Layouts follow the released weights:
offsets viewed as [heads, levels, points, (x, y)], one softmax per head over levels*points, value
split into contiguous per-head channel blocks.

Sampling is bilinear with zero padding and ``align_corners=False``, the arithmetic of
``grid_sample`` (which the official pure-PyTorch reference and its CUDA kernel both compute). It is
done here as one ``embedding_bag`` per chunk of queries instead of one ``grid_sample`` per level:

* the value of every level gets a one-pixel border of zeros and all levels go into one table of
  rows [(frame, position, head), head_dim], so the 4 bilinear corners of every sample are plain
  row indices (no bounds checks: a corner outside the map lands on the zero border);
* every (query, head) is a bag of levels*points*4 rows whose weights are the attention weight
  times the bilinear corner weight, so gathering, interpolating and the weighted sum over levels
  and points is one fused kernel that writes [queries, heads*head_dim] directly.

This never materialises the [N*heads, head_dim, queries, levels*points] tensor the reference
builds (32x the sample count), and reads each corner as one contiguous row. Sampling positions
are computed in pixels as ``ref * size - 0.5 + offset`` (the official code's
``((2 * (ref + offset / size) - 1) + 1) * size / 2 - 0.5``, simplified; float32 also under
autocast). Results equal the ``grid_sample`` reference up to float rounding and are as accurate
against float64 (tests/model/test_fast_paths.py, tests/model/test_deformable_attention.py).
Under autograd on CPU the module samples with ``grid_sample`` instead: ``embedding_bag``'s CPU
backward sorts every index and made a tiny-joint training step 1.6x slower.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.model import kernels

# Indices are built in float32 (exact for integers below 2**24) and converted once.
_FLOAT_EXACT = 1 << 24


def multi_scale_deformable_attention(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Bilinear sampling (zero padding, align_corners=False) and weighted sum.

    value [N, S, M, D] (S = sum of h*w over levels, M heads, D channels per head);
    locations [N, Lq, M, Lv, P, 2] in [0, 1] (x, y); weights [N, Lq, M, Lv, P] -> [N, Lq, M*D].
    """
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=locations.device)
    pixels = _at_least_fp32(locations) * sizes[:, None, :] - 0.5  # [N, Lq, M, Lv, P, 2]
    return sample_pixels(value, shapes, pixels.movedim(-1, 2), weights)


def multi_scale_deformable_attention_grid_sample(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The official pure-PyTorch formulation (one ``grid_sample`` per level, then a weighted sum).

    The CPU training path (``MSDeformAttn`` under autograd: its backward is much faster than
    ``embedding_bag``'s there) and a second reference for the tests; same arguments and result as
    ``multi_scale_deformable_attention``.
    """
    n, _, m, d = value.shape
    _, lq, _, lv, p, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, per_level in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[level]
        v = per_level.flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    w = weights.transpose(1, 2).reshape(n * m, 1, lq, lv * p)
    out = (stacked * w).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2)


def _at_least_fp32(x: Tensor) -> Tensor:
    """Sampling positions and attention softmax stay in float32 under bf16/fp16 (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _Plan:
    """Constants of the sampler for one (level shapes, heads, points) layout, shared by all layers.

    Per-sample constants are materialised over the whole (head, level, point) block so that every
    elementwise op broadcasts only over whole rows (contiguous inner loops)."""

    def __init__(self, shapes: list[tuple[int, int]], m: int, p: int, device: torch.device) -> None:
        lv = len(shapes)
        padded = [(h + 2) * (w + 2) for h, w in shapes]
        self.rows_per_frame = (sum(padded) + shapes[-1][1] + 3) * m  # table rows of one frame
        starts = [0]
        for size in padded[:-1]:
            starts.append(starts[-1] + size)
        f32 = dict(dtype=torch.float32, device=device)

        def full(per_level: list) -> Tensor:  # [Lv, ...] -> [..., M, Lv, P] broadcast over heads and points
            t = torch.tensor(per_level, **f32)
            t = t.movedim(0, -1) if t.dim() > 1 else t
            return t[..., None, :, None].expand(*t.shape[:-1], m, lv, p).contiguous()

        # clamp bounds: x in [-1, w], y in [-1, h]; floor() then lands in [-1, size], and both
        # corners of a sample on the zero border or inside (a corner one past the border, at
        # x = w + 1 or y = h + 1, only ever gets weight 0: the table has a tail of zero rows)
        hi = torch.tensor([[w, h] for h, w in shapes], **f32)
        self.hi = full(hi.tolist())  # [2, M, Lv, P]
        self.y_stride = full([(w + 2) * m for _, w in shapes])  # [M, Lv, P]
        self.x_stride = float(m)
        # table row of padded pixel (y + 1, x + 1), head h: (start + (y+1)*(w+2) + x + 1) * m + h
        level_base = full([(st + (w + 2) + 1) * m for st, (_, w) in zip(starts, shapes)])
        self.const = level_base + torch.arange(m, **f32)[:, None, None]  # [M, Lv, P]
        # the 4 bilinear corners (y0 x0, y0 x1, y1 x0, y1 x1) as row offsets: [4, Lv * P]
        corners = torch.tensor([[0, m, (w + 2) * m, (w + 3) * m] for _, w in shapes], dtype=torch.int32,
                               device=device)
        self.corners = corners.t()[:, :, None].expand(4, lv, p).reshape(4, lv * p).contiguous()
        # ref [.., Lv, (x, y)] @ expand -> the same value for every head and point: [Lv*2, 2*M*Lv*P]
        expand = torch.zeros(lv, 2, 2, m, lv, p, **f32)
        for level in range(lv):
            for xy in range(2):
                expand[level, xy, xy, :, level, :] = 1.0
        self.expand = expand.view(lv * 2, -1)


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()


def _plan(shapes: list[tuple[int, int]], m: int, p: int, device: torch.device) -> _Plan:
    key = (tuple(shapes), m, p, str(device))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _Plan(shapes, m, p, device)
        while len(_PLANS) > 8:
            _PLANS.popitem(last=False)
    return plan


def padded_value_table(value: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """[N, S, M, D] -> [N * S' * M, D]: every level with a one-pixel zero border, then a few zero
    positions, rows (frame, padded position, head). Five ops whatever the size."""
    n, _, m, d = value.shape
    c = m * d
    total = sum((h + 2) * (w + 2) for h, w in shapes) + shapes[-1][1] + 3
    table = value.new_zeros(n, total, c)
    start = dst = 0
    for h, w in shapes:
        level = table[:, dst:dst + (h + 2) * (w + 2)].view(n, h + 2, w + 2, c)
        level[:, 1:-1, 1:-1] = value[:, start:start + h * w].view(n, h, w, c)
        start += h * w
        dst += (h + 2) * (w + 2)
    return table.view(-1, d)


def sample_pixels(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """The sampler on pixel coordinates.

    value [N, S, M, D]; ``pixels`` [N, Lq, 2, M, Lv, P], planar (all x, then all y), in each
    level's pixel units with pixel centres at integers (``grid_sample``'s x * w - 0.5);
    weights [N, Lq, M, Lv, P] -> [N, Lq, M*D] in value's dtype.
    """
    n, _, m, d = value.shape
    _, lq, _, _, lv, p = pixels.shape
    plan = _plan(shapes, m, p, value.device)
    table = padded_value_table(value, shapes)
    return sample_rows(table, plan, lq, 0, n * lq, pixels.reshape(n * lq, 2, m, lv, p),
                       weights.reshape(n * lq, m, lv * p)).view(n, lq, m * d)


def sample_rows(table: Tensor, plan: _Plan, lq: int, start: int, stop: int, pixels: Tensor,
                weights: Tensor) -> Tensor:
    """Rows [start, stop) of the flattened (frame, query) sequence, each against its own frame's
    part of ``table`` [N * S' * M, D] (``padded_value_table``); ``pixels`` [R, 2, M, Lv, P] (see
    ``sample_pixels``), ``weights`` [R, M, Lv * P] for those rows -> [R, M * D].

    Bilinear corners become table rows: floor(x) + 1, floor(y) + 1 in the zero-bordered map, plus
    the frame's offset, built in float32 (exact below 2**24 rows) and converted once; the corner
    weights times the attention weight are the bag weights, so ``embedding_bag`` gathers,
    interpolates and sums in one pass. About twenty ops per call, whatever the number of frames
    (frames are split only to keep the float row indices exact).
    """
    per_frame = plan.rows_per_frame
    if per_frame >= _FLOAT_EXACT:
        raise ValueError("feature maps too large for the deformable sampler (2**24 table rows per frame)")
    frames_per_call = max(1, (_FLOAT_EXACT - 1) // per_frame)
    out, row = [], start
    while row < stop:
        first = row // lq
        end = min(stop, (first + frames_per_call) * lq)
        block = table[first * per_frame:(first + frames_per_call) * per_frame]
        out.append(_sample(block, plan, lq, row - first * lq, pixels[row - start:end - start],
                           weights[row - start:end - start]))
        row = end
    return out[0] if len(out) == 1 else torch.cat(out)


def _sample(table: Tensor, plan: _Plan, lq: int, start: int, pixels: Tensor, weights: Tensor) -> Tensor:
    """``sample_rows`` for rows whose frames all lie in ``table``; ``start`` = row of the first one
    counted from the table's first frame."""
    r, _, m, lv, p = pixels.shape
    d = table.shape[-1]
    grad = torch.is_grad_enabled() and (pixels.requires_grad or weights.requires_grad or table.requires_grad)
    # NaN -> -1 (a zero row), then clamp; nan_to_num + clamp_ rather than fmax, which is not
    # vectorised on CPU (11x slower at these sizes)
    pix = torch.nan_to_num(_at_least_fp32(pixels), nan=-1.0).clamp_(min=-1.0)
    pix = torch.minimum(pix, plan.hi) if grad else torch.minimum(pix, plan.hi, out=pix)
    base = pix.floor()
    frac = pix - base if grad else pix.sub_(base)
    bx, by = base.unbind(1)  # [R, M, Lv, P]
    index = by * plan.y_stride
    index.add_(bx, alpha=plan.x_stride)
    index.add_(plan.const)
    if start + r > lq:  # rows beyond the table's first frame: add their frame's offset
        frame = torch.arange(start, start + r, device=index.device).div_(lq, rounding_mode="floor")
        index.add_(frame.to(index.dtype).mul_(plan.rows_per_frame).view(r, 1, 1, 1))
    index = index.to(torch.int32).view(r, m, 1, lv * p) + plan.corners  # [R, M, 4, Lv*P]
    # corner weights (1 - fy, fy) x (1 - fx, fx) times the attention weight, same layout
    fx, fy = frac.to(table.dtype).view(r, 2, m, lv * p).unbind(1)
    a = weights.to(table.dtype)
    ay1 = a * fy
    ay0 = a - ay1
    fx0 = 1.0 - fx
    if grad:
        w4 = torch.stack([ay0 * fx0, ay0 * fx, ay1 * fx0, ay1 * fx], 2)
    else:
        w4 = table.new_empty(r, m, 4, lv * p)
        torch.mul(ay0, fx0, out=w4[:, :, 0])
        torch.mul(ay0, fx, out=w4[:, :, 1])
        torch.mul(ay1, fx0, out=w4[:, :, 2])
        torch.mul(ay1, fx, out=w4[:, :, 3])
    out = F.embedding_bag(index.view(r * m, -1), table, per_sample_weights=w4.view(r * m, -1), mode="sum")
    return out.view(r, m * d)


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._planar_cache = kernels.PackedWeights(size=2)
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
        pixels, weights = self.locations(query.reshape(n * lq, -1), reference.reshape(n * lq, *reference.shape[2:]),
                                         shapes)
        if value_in.device.type == "cpu" and torch.is_grad_enabled() and any(
                t.requires_grad for t in (query, value_in, *self.parameters())):
            # Training on CPU: grid_sample's backward is ~5x faster than embedding_bag's (which
            # sorts every index; 40 % of a tiny-joint training step), same function. Not on
            # CUDA: there it would keep a [N*M, D, Lq, Lv*P] product per layer for backward.
            sampled = self._sample_grid(value_in, shapes, padding_mask, pixels, weights)
        else:
            table = self.value_table(value_in, shapes, padding_mask)
            sampled = self.sample_rows(table, lq, 0, n * lq, pixels, weights, shapes)
        return kernels.linear(sampled, self.output_proj).view(n, lq, -1)

    def _sample_grid(self, value_in: Tensor, shapes: list[tuple[int, int]], padding_mask: Tensor | None,
                     pixels: Tensor, weights: Tensor) -> Tensor:
        """The sampler through ``grid_sample`` (the official formulation), for autograd:
        ``pixels`` [R, 2, M, Lv, P] and ``weights`` [R, M, Lv * P] from ``locations`` -> [R, M * D]."""
        n = value_in.shape[0]
        r, _, m, lv, p = pixels.shape
        value = _at_least_fp32(self.values(value_in, padding_mask))
        sizes = torch.tensor([[w, h] for h, w in shapes], dtype=pixels.dtype, device=pixels.device)
        locations = (pixels.movedim(1, -1) + 0.5) / sizes[:, None, :]  # [R, M, Lv, P, 2] in [0, 1]
        out = multi_scale_deformable_attention_grid_sample(
            value, shapes, locations.view(n, r // n, m, lv, p, 2), weights.view(n, r // n, m, lv, p).to(value.dtype))
        return out.reshape(r, -1)

    def sample_rows(self, table: Tensor, lq: int, start: int, stop: int, pixels: Tensor, weights: Tensor,
                    shapes: list[tuple[int, int]]) -> Tensor:
        """Rows [start, stop) of the flattened (frame, query) sequence against ``table`` (from
        ``value_table``) -> [stop - start, M * D]."""
        plan = _plan(shapes, self.n_heads, self.n_points, table.device)
        return sample_rows(table, plan, lq, start, stop, pixels, weights)

    def value_table(self, value_in: Tensor, shapes: list[tuple[int, int]],
                    padding_mask: Tensor | None = None) -> Tensor:
        """value_in [N, S, C] -> the sampler's table [N * S' * M, D] (value_proj, zeroed padding,
        zero-bordered levels)."""
        return padded_value_table(self.values(value_in, padding_mask), shapes)

    def values(self, value_in: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """value_in [N, S, C] -> value_proj with padding zeroed, split into heads [N, S, M, D]."""
        n = value_in.shape[0]
        value = kernels.linear(value_in, self.value_proj)
        if padding_mask is not None:
            value = value.masked_fill_(padding_mask[..., None], 0.0)
        return value.view(n, value.shape[1], self.n_heads, self.d_model // self.n_heads)

    def locations(self, query: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Per query row: query [R, C]; reference [R, Lv, 2 or 4] -> sampling pixels
        [R, 2, M, Lv, P] (planar, see ``sample_pixels``) and softmax weights [R, M, Lv * P]."""
        r = query.shape[0]
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        weights = kernels.linear(query, self.attention_weights).view(r, m, lv * p)
        weights = _at_least_fp32(weights).softmax(-1)
        # offsets with their output channels reordered planar: [.., (x, y), M, Lv, P]
        w_off, b_off = self._planar_offsets()
        offsets = _at_least_fp32(F.linear(query, w_off, b_off))
        plan = _plan(shapes, m, p, query.device)
        sizes = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=query.device)
        reference = _at_least_fp32(reference).to(offsets.dtype)
        if reference.shape[-1] == 2:
            # offsets are in pixels of each level: x_pixel = (ref * w - 0.5) + offset; the
            # reference is broadcast over heads and points by a 0/1 matrix product (exact)
            ref_pixels = (reference * sizes - 0.5).view(r, lv * 2)
            expand = plan.expand.to(offsets.dtype)
            pixels = offsets.addmm_(ref_pixels, expand) if not torch.is_grad_enabled() \
                else torch.addmm(offsets, ref_pixels, expand)
            pixels = pixels.view(r, 2, m, lv, p)
        else:
            # 4-d box references: offsets scale with half the box size (official arithmetic)
            ref = reference.movedim(-1, 1)[:, :, None, :, None]  # [R, 4, 1, Lv, 1]
            locations = ref[:, :2] + offsets.view(r, 2, m, lv, p) / p * ref[:, 2:] * 0.5
            pixels = locations * sizes.t()[None, :, None, :, None] - 0.5
        return pixels, weights

    def _planar_offsets(self) -> tuple[Tensor, Tensor]:
        """sampling_offsets' weight and bias with output channels [M, Lv, P, (x, y)] reordered to
        [(x, y), M, Lv, P]: the same products, in the layout the sampler wants. Cached while the
        weights do not change (inference), in the autocast dtype if one is active."""
        w, b = self.sampling_offsets.weight, self.sampling_offsets.bias
        shape = (self.n_heads * self.n_levels * self.n_points, 2)

        def build():
            return (kernels.weight(w.view(*shape, -1).transpose(0, 1).reshape(w.shape)),
                    kernels.weight(b.view(shape).t().reshape(-1)))

        if not kernels.inference(w, b):
            return build()
        dtype = kernels.autocast_dtype(w.device.type) or w.dtype
        return self._planar_cache.get(dtype, (w, b), build)
