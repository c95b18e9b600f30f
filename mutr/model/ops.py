"""Inference building blocks that keep the official arithmetic with less memory traffic.

The official modules run each step (attention, residual add, LayerNorm, FFN, ...) over the whole
token sequence of a clip; the FFN's 2048-wide hidden layer alone is 0.6 GB for a 5-frame clip at
360x640 and 6 GB for 36 frames at 432x768 (twice, with the out-of-place ReLU). All these steps
are row-wise (per token) once the keys and values of an attention are known, so the inference
paths run them over large chunks of token rows: the same matrix products on fewer rows, the same
LayerNorm row reductions, the same ``scaled_dot_product_attention`` call that
``nn.MultiheadAttention`` makes, so the results are bitwise those of the module forward
(tests/model/test_fast_paths.py checks it), with bounded memory and in-place ReLU.

Chunk size is a trade between cache locality (the FFN's hidden rows, the sampler's index and
weight tensors stay in L2/L3) and per-op overhead (every multi-threaded op pays for its threads to
meet: ~6 ms per op measured on 2 busy cores). On an idle machine locality wins (``ROWS``).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.model import kernels

# Token rows per chunk (a multiple of 256). Measured on 2 idle cores (AMD EPYC, r50, 5x360x640,
# whole forward, outputs bitwise equal for every choice): 16384 rows 1.45 s/frame fp32, 0.66 bf16;
# 4096 rows 1.23 / 0.57; 2048 rows 1.22 / 0.60. 4096 bounds the FFN hidden layer to 32 MB in fp32.
ROWS = 4096


def chunks(total: int, rows: int | None = None):
    """(start, stop) ranges covering ``range(total)``: ``rows`` (default ``ROWS``) at a time, a
    multiple of 256, starting at multiples of it, the remainder merged into the last chunk.

    Why: a matrix product's rows do not depend on how many rows it has, except for very small
    counts, where MKL (with threads) and the CPU flash attention (whose query blocks are 256 rows
    from the start of the call once there are >= 768 queries) take other paths. Aligned chunks of
    >= ``rows`` / 2 rows see exactly the blocks the whole-sequence call sees, so the results are
    bitwise the same; a total below ``rows`` is one chunk, the whole-sequence call itself.
    """
    rows = max(256, (rows or ROWS) // 256 * 256)
    start = 0
    while start < total:
        stop = start + rows
        if total - stop < rows // 2:
            stop = total
        yield start, stop
        start = stop


def ffn(x: Tensor, linear1: nn.Linear, linear2: nn.Linear) -> Tensor:
    """linear2(relu(linear1(x))) for a 2-D chunk of rows, ReLU in place (inference). Under bf16
    autocast on CPU both products are oneDNN calls on weights packed once (``onednn_weights``), the
    first with its ReLU fused."""
    dtype = kernels.autocast_dtype(x.device.type)
    if dtype == torch.bfloat16 and x.device.type == "cpu" and kernels.mkldnn_fusion(x.to(dtype)[:0]):
        w1, b1 = onednn_weights(linear1, dtype)
        w2, b2 = onednn_weights(linear2, dtype)
        hidden = torch.ops.mkldnn._linear_pointwise(x.to(dtype), w1, b1, "relu", [], "")
        return torch.ops.mkldnn._linear_pointwise(hidden, w2, b2, "none", [], "")
    return kernels.linear(kernels.linear(x, linear1).relu_(), linear2)


_PACKED: "weakref.WeakKeyDictionary[nn.Linear, kernels.PackedWeights]" = weakref.WeakKeyDictionary()


def onednn_weights(layer: nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """The layer's weight cast to ``dtype`` and reordered into oneDNN's blocked layout, and its
    bias cast, cached until the parameters change. An eager oneDNN linear reorders a plain weight
    on every call: packing once made r50's fast mode ~3 % faster (same outputs, bitwise)."""
    store = _PACKED.get(layer)
    if store is None:
        store = _PACKED[layer] = kernels.PackedWeights(size=2)

    def build():
        weight = layer.weight.detach().to(dtype)
        try:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS)
        except (RuntimeError, AttributeError):  # no oneDNN packing in this build: the plain weight works
            pass
        return weight, None if layer.bias is None else layer.bias.detach().to(dtype)

    sources = (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)
    return store.get(dtype, sources, build)


class KeyValues:
    """The key/value side of an ``nn.MultiheadAttention`` call, projected once for many query
    chunks, laid out exactly as ``F.multi_head_attention_forward`` lays it out.

    ``key``/``value`` [Lk, B, E] (sequence first, as the module takes them); ``key_padding_mask``
    [B, Lk] True = ignore. ``same_kv`` says the module was called with ``key is value`` (then it
    projects them with one matrix product over the stacked weights, as the module does).
    """

    def __init__(self, mha: nn.MultiheadAttention, key: Tensor, value: Tensor,
                 key_padding_mask: Tensor | None = None, same_kv: bool = False) -> None:
        e, h = mha.embed_dim, mha.num_heads
        lk, b, _ = key.shape
        hd = e // h
        w, bias = kernels.weight(mha.in_proj_weight), kernels.weight(mha.in_proj_bias)
        if same_kv:
            _, w_kv = w.split([e, 2 * e])
            _, b_kv = bias.split([e, 2 * e])
            kv = F.linear(key, w_kv, b_kv)
            kv = kv.unflatten(-1, (2, e)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            k, v = kv[0], kv[1]
        else:
            _, w_k, w_v = w.chunk(3)
            _, b_k, b_v = bias.chunk(3)
            k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        self.k = k.view(lk, b * h, hd).transpose(0, 1).view(b, h, lk, hd)
        self.v = v.view(lk, b * h, hd).transpose(0, 1).view(b, h, lk, hd)
        self.mask = None
        if key_padding_mask is not None:
            # F._canonical_mask + the merge in F.multi_head_attention_forward: 0 / -inf floats
            mask = torch.zeros(b, lk, dtype=self.k.dtype, device=self.k.device)
            mask.masked_fill_(key_padding_mask, float("-inf"))
            self.mask = mask.view(b, 1, 1, lk).expand(-1, h, -1, -1)
        self.mha = mha
        self.folded: dict[int, tuple[Tensor, ...]] = {}
        # fast mode (autocast): fold the key and value projections into the query side when there
        # are few keys (reference tokens): fewer flops and no attention kernel call (other rounding)
        dtype = kernels.autocast_dtype(self.k.device.type)
        self.fold = dtype is not None and lk * h < e
        self.fold_dtype = dtype

    def _fold(self, batch: int) -> tuple[Tensor, ...]:
        """Per batch item, transposed so that the softmax runs over a non-inner axis (fast):
        A^T [H*Lk, E], c [H*Lk, 1], U [H*Lk, E] with
        softmax_h((x Wq_h^T + bq_h) K_h^T / sqrt(d)) V_h Wo_h^T = softmax_h(x A + c) U."""
        if batch not in self.folded:
            mha = self.mha
            e, h = mha.embed_dim, mha.num_heads
            hd = e // h
            k = self.k[batch].float() / math.sqrt(hd)  # [H, Lk, hd]
            v = self.v[batch].float()
            w_q = mha.in_proj_weight[:e].float().view(h, hd, e)
            b_q = mha.in_proj_bias[:e].float().view(h, hd)
            a_t = torch.einsum("hde,hkd->hke", w_q, k).reshape(-1, e)
            c = torch.einsum("hd,hkd->hk", b_q, k)
            if self.mask is not None:
                c = c + self.mask[batch, :, 0].float()
            w_o = mha.out_proj.weight.float().view(e, h, hd)
            u = torch.einsum("hkd,ehd->hke", v, w_o).reshape(-1, e)
            dtype = self.fold_dtype
            self.folded[batch] = (a_t.to(dtype), c.reshape(-1, 1).to(dtype), u.to(dtype),
                                  mha.out_proj.bias.to(dtype))
        return self.folded[batch]

    def attend(self, query: Tensor, batch: int) -> Tensor:
        """query rows [R, E] of batch item ``batch`` -> attention output [R, E] (after out_proj)."""
        mha = self.mha
        if self.fold:
            a_t, c, u, b_o = self._fold(batch)
            h = mha.num_heads
            scores = torch.addmm(c, a_t, query.to(a_t.dtype).t())  # [H*Lk, R]
            p = scores.float().view(h, -1, scores.shape[-1]).softmax(1).to(a_t.dtype)
            return torch.addmm(b_o, p.view(-1, p.shape[-1]).t(), u)
        e, h = mha.embed_dim, mha.num_heads
        r = query.shape[0]
        w_q, b_q = kernels.weight(mha.in_proj_weight)[:e], kernels.weight(mha.in_proj_bias)[:e]
        q = F.linear(query, w_q, b_q).view(r, h, e // h).transpose(0, 1).unsqueeze(0)
        sl = slice(batch, batch + 1)
        mask = None if self.mask is None else self.mask[sl]
        out = F.scaled_dot_product_attention(q, self.k[sl], self.v[sl], mask)
        out = out.permute(2, 0, 1, 3).contiguous().view(r, e)
        return kernels.linear(out, mha.out_proj)


class TokenRows:
    """Rows of the official [(t h w), b, c] token sequence of a feature map [(b t), c, h, w],
    read chunk by chunk without materialising the whole sequence."""

    def __init__(self, x: Tensor, b: int, t: int) -> None:
        _, c, h, w = x.shape
        self.x = x.reshape(b, t, c, h * w)  # a view when the layout allows
        self.hw = h * w

    def get(self, i: int, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of batch item i -> a new [stop - start, c] tensor (contiguous)."""
        hw = self.hw
        parts = []
        while start < stop:
            j, p = divmod(start, hw)
            end = min(stop, (j + 1) * hw)
            parts.append(self.x[i, j, :, p:p + end - start].t())
            start = end
        if len(parts) > 1:
            return torch.cat(parts)
        return parts[0].clone() if parts[0].is_contiguous() else parts[0].contiguous()
