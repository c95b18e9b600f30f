"""Cross-modal FPN pixel decoder: top-down FPN whose every stage also attends to the reference.

Stages run /32 -> /16 -> /8 on the encoder memory and end on backbone res2 (/4). Each stage has a
VisionLanguageBlock: spatio-temporal self-attention over all T*h*w tokens of a video (keys and
values spatially reduced by ``sr_ratio`` with legacy-nearest resize), cross-attention to the
reference tokens, FFN. The output is the mask features [B*T, mask_dim, H/4, W/4].
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import FusionConfig
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
        bt, c, h, w = x.shape
        b = bt // t
        q = x + pos
        v = x
        if self.sr_ratio > 1:
            size = (int(h * (1.0 / self.sr_ratio)), int(w * (1.0 / self.sr_ratio)))
            q = F.interpolate(q, size=size, mode="nearest")
            v = F.interpolate(v, size=size, mode="nearest")
            mask = F.interpolate(mask[None].float(), size=size, mode="nearest")[0].bool()
        hs, ws = q.shape[-2:]
        attended = self.self_attn(_to_seq(q, b, t), _to_seq(q, b, t), _to_seq(v, b, t),
                                  key_padding_mask=mask.reshape(b, t * hs * ws), need_weights=False)[0]
        attended = _from_seq(attended, t, hs, ws)
        if self.sr_ratio > 1:
            attended = F.interpolate(attended, size=(h, w), mode="bilinear", align_corners=False)
        seq = _to_seq(x, b, t) + self.dropout1(_to_seq(attended, b, t))
        seq = self.norm1(seq)
        seq_pos = _to_seq(pos, b, t)
        words = ref.features.transpose(0, 1)
        cross = self.multihead_attn(seq + seq_pos, words + ref.pos.transpose(0, 1), words,
                                    key_padding_mask=ref.mask, need_weights=False)[0]
        seq = self.norm2(seq + self.dropout2(cross))
        seq = self.norm3(seq + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(seq))))))
        return _from_seq(seq, t, h, w)


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
                ref: ReferenceTokens, t: int) -> Tensor:
        """res2 [B*T, C2, H/4, W/4]; memory: encoder maps /8, /16, /32; masks, poses: backbone
        levels /4, /8, /16, /32. Returns mask features [B*T, mask_dim, H/4, W/4]."""
        inputs = [res2, *memory]
        y = None
        for stage in (4, 3, 2, 1):
            i = stage - 1
            x = getattr(self, f"adapter_{stage}")(inputs[i])
            x = getattr(self, f"cross_attn_{stage}")(x, poses[i], masks[i], ref, t)
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{stage}")(x)
        return self.mask_features(y)
