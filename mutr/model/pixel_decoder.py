"""Cross-modal FPN pixel decoder: top-down FPN whose every stage also attends to the reference.

Stages run /32 -> /16 -> /8 on the encoder memory and end on backbone res2 (/4). Each stage has a
VisionLanguageBlock: spatio-temporal self-attention over all T*h*w tokens of a video (keys and
values spatially reduced by ``sr_ratio`` with legacy-nearest resize), cross-attention to the
reference tokens, FFN. The output is the mask features [B*T, mask_dim, H/4, W/4].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import FusionConfig
from mutr.model import kernels, ops
from mutr.model.reference import ReferenceTokens


class ConvNorm(nn.Module):
    """conv (no bias) + GroupNorm [+ ReLU]."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(groups, cout)
        self.relu = relu
        nn.init.kaiming_uniform_(self.conv.weight, a=1)  # detectron2's c2_xavier_fill

    def forward(self, x: Tensor) -> Tensor:
        if kernels.inference(x, self.conv.weight):
            x = self.norm(kernels.conv2d(x, self.conv))
            return x.relu_() if self.relu else x
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class VisionLanguageBlock(nn.Module):
    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float, sr_ratio: int) -> None:
        super().__init__()
        self.sr_ratio = sr_ratio
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor, ref: ReferenceTokens, t: int) -> Tensor:
        """x, pos [B*T, C, h, w]; mask [B*T, h, w] -> [B*T, C, h, w]."""
        attended = self._self_attention(x, pos, mask, t)
        if not self.training and kernels.inference(x, *self.parameters()):  # (training: dropout)
            return self._rows(x, attended, pos, ref, t)
        bt, c, h, w = x.shape
        b = bt // t
        seq = _to_seq(x, b, t) + self.dropout1(_to_seq(attended, b, t))
        seq = self.norm1(seq)
        seq_pos = _to_seq(pos, b, t)
        words = ref.features.transpose(0, 1)
        cross = self.multihead_attn(seq + seq_pos, words + ref.pos.transpose(0, 1), words,
                                    key_padding_mask=ref.mask, need_weights=False)[0]
        seq = self.norm2(seq + self.dropout2(cross))
        seq = self.norm3(seq + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(seq))))))
        return _from_seq(seq, t, h, w)

    def _self_attention(self, x: Tensor, pos: Tensor, mask: Tensor, t: int) -> Tensor:
        """Spatio-temporal self-attention (keys and values spatially reduced by sr_ratio), brought
        back to the full map: [B*T, C, h, w]."""
        bt, c, h, w = x.shape
        b = bt // t
        v = x
        if self.sr_ratio > 1:
            size = (int(h * (1.0 / self.sr_ratio)), int(w * (1.0 / self.sr_ratio)))
            if kernels.enabled():  # nearest resizing picks elements: resize, then add (the same values)
                q = F.interpolate(x, size=size, mode="nearest") + F.interpolate(pos, size=size, mode="nearest")
            else:
                q = F.interpolate(x + pos, size=size, mode="nearest")
            v = F.interpolate(v, size=size, mode="nearest")
            mask = F.interpolate(mask[None].float(), size=size, mode="nearest")[0].bool()
        else:
            q = x + pos
        hs, ws = q.shape[-2:]
        kpm = mask.reshape(b, t * hs * ws)
        if not self.training and kernels.inference(x, *self.self_attn.parameters()):
            # the module's arithmetic (separate q, k, v projections, one attention call per video)
            kv = ops.KeyValues(self.self_attn, _to_seq(q, b, t), _to_seq(v, b, t), kpm)
            qs = _to_seq(q, b, t)
            attended = torch.stack([kv.attend(qs[:, i], i) for i in range(b)], 1)
        else:
            attended = self.self_attn(_to_seq(q, b, t), _to_seq(q, b, t), _to_seq(v, b, t),
                                      key_padding_mask=kpm, need_weights=False)[0]
        attended = _from_seq(attended, t, hs, ws)
        if self.sr_ratio > 1:
            attended = F.interpolate(attended, size=(h, w), mode="bilinear", align_corners=False)
        return attended

    def _rows(self, x: Tensor, attended: Tensor, pos: Tensor, ref: ReferenceTokens, t: int) -> Tensor:
        """Residual + norm1, cross-attention to the reference, norm2, FFN, norm3: all per token,
        so run over chunks of token rows (ops.py); the same values as the module path."""
        bt, c, h, w = x.shape
        b, hw = bt // t, h * w
        words = ref.features.transpose(0, 1)
        kv = ops.KeyValues(self.multihead_attn, words + ref.pos.transpose(0, 1), words, ref.mask)
        xs, ats, ps = (ops.TokenRows(v, b, t) for v in (x, attended, pos))
        out = x.new_empty(t * hw, b, c)  # the official (t h w) b c sequence
        n1, n2, n3 = self.norm1, self.norm2, self.norm3
        for i in range(b):
            for r0, r1 in ops.chunks(t * hw):
                seq = xs.get(i, r0, r1).add_(ats.get(i, r0, r1))
                seq = F.layer_norm(seq, (c,), n1.weight, n1.bias, n1.eps)
                cross = kv.attend(ps.get(i, r0, r1).add_(seq), i)
                seq = F.layer_norm(seq + cross, (c,), n2.weight, n2.bias, n2.eps)
                seq = F.layer_norm(seq + ops.ffn(seq, self.linear1, self.linear2), (c,), n3.weight, n3.bias, n3.eps)
                out[r0:r1, i] = seq
        return _from_seq(out, t, h, w)


def _to_seq(x: Tensor, b: int, t: int) -> Tensor:
    """[(b t), c, h, w] -> [(t h w), b, c]"""
    _, c, h, w = x.shape
    return x.reshape(b, t, c, h * w).permute(1, 3, 0, 2).reshape(t * h * w, b, c)


def _from_seq(x: Tensor, t: int, h: int, w: int) -> Tensor:
    """[(t h w), b, c] -> [(b t), c, h, w]"""
    _, b, c = x.shape
    return x.reshape(t, h * w, b, c).permute(2, 0, 3, 1).reshape(b * t, c, h, w)


class CrossModalFPNDecoder(nn.Module):
    def __init__(self, res2_channels: int, d_model: int, mask_dim: int, cfg: FusionConfig) -> None:
        super().__init__()
        g = cfg.fpn_groups
        for stage, cin in enumerate([res2_channels, d_model, d_model, d_model], start=1):
            self.add_module(f"adapter_{stage}", ConvNorm(cin, d_model, 1, g, relu=False))
            self.add_module(f"layer_{stage}", ConvNorm(d_model, d_model, 3, g, relu=True))
            self.add_module(f"cross_attn_{stage}", VisionLanguageBlock(
                d_model, cfg.nheads, cfg.fpn_ffn, cfg.fpn_dropout, cfg.fpn_sr_ratios[stage - 1]))
        self.mask_features = nn.Conv2d(d_model, mask_dim, 3, padding=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    def forward(self, res2: Tensor, memory: list[Tensor], masks: list[Tensor], poses: list[Tensor],
                ref: ReferenceTokens, t: int, project: bool = True) -> Tensor:
        """res2 [B*T, C2, H/4, W/4]; memory: encoder maps /8, /16, /32; masks, poses: backbone
        levels /4, /8, /16, /32. Returns mask features [B*T, mask_dim, H/4, W/4], or with
        ``project=False`` the input of the last convolution (``mask_features``) [B*T, C, H/4, W/4],
        for a mask head that folds that convolution into its own first layer."""
        inputs = [res2, *memory]
        y = None
        for stage in (4, 3, 2, 1):
            i = stage - 1
            x = getattr(self, f"adapter_{stage}")(inputs[i])
            x = getattr(self, f"cross_attn_{stage}")(x, poses[i], masks[i], ref, t)
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{stage}")(x)
        if not project:
            return y
        if kernels.inference(y, self.mask_features.weight):
            return kernels.conv2d(y, self.mask_features)
        return self.mask_features(y)
