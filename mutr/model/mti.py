"""MTI: multi-object temporal interaction (from VITA).

Frame-level queries from the decoder go through a windowed temporal encoder (windows of 4 frames,
every other layer shifted by 2 frames *at inference only*) and a decoder with video-level queries.
The result is one query set per video, broadcast back to every frame.

Batches: the official code reshapes [T, B] as if it were [B, T] and tiles the output as (t b) but
reads it as (b t), so videos of a batch mix when B > 1. Here each video is kept apart; for B = 1
(all official inference) the two agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import MTIConfig


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nheads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> Tensor:
        qk = x if pos is None else x + pos
        out = self.self_attn(qk, qk, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                             need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nheads: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        out = self.multihead_attn(x + query_pos, memory + pos, memory, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout(out))


class MTI(nn.Module):
    def __init__(self, cfg: MTIConfig, d_model: int, num_queries: int) -> None:
        super().__init__()
        self.window = cfg.window_size
        self.nheads = cfg.nheads
        self.num_queries = num_queries
        mk_self = lambda: SelfAttentionLayer(d_model, cfg.nheads, cfg.dropout)  # noqa: E731
        mk_ffn = lambda: FFNLayer(d_model, cfg.dim_feedforward, cfg.dropout)  # noqa: E731
        self.enc_self_attn = nn.ModuleList(mk_self() for _ in range(cfg.enc_layers))
        self.enc_ffn = nn.ModuleList(mk_ffn() for _ in range(cfg.enc_layers))
        self.dec_cross_attn = nn.ModuleList(
            CrossAttentionLayer(d_model, cfg.nheads, cfg.dropout) for _ in range(cfg.dec_layers))
        self.dec_self_attn = nn.ModuleList(mk_self() for _ in range(cfg.dec_layers))
        self.dec_ffn = nn.ModuleList(mk_ffn() for _ in range(cfg.dec_layers))
        self.fq_pos = nn.Embedding(num_queries, d_model)  # key position per frame-query slot
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.query_feat = nn.Embedding(num_queries, d_model)
        self.decoder_norm = nn.LayerNorm(d_model)
        for layer in [*self.enc_self_attn, *self.enc_ffn, *self.dec_cross_attn, *self.dec_self_attn,
                      *self.dec_ffn]:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, frame_queries: Tensor) -> Tensor:
        """frame_queries [Lyr, B, T, Q, C] -> video queries [Lyr, B, Q, C].

        Each decoder layer's queries (Lyr of them) are an independent item with shared weights.
        """
        lyr, b, t, q, c = frame_queries.shape
        lb = lyr * b
        x = frame_queries.reshape(lb, t, q, c).permute(1, 2, 0, 3)  # [T, Q, LB, C]
        t_pad = math.ceil(t / self.window) * self.window
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, t_pad - t))
        padded = x.new_ones(lb, t_pad, dtype=torch.bool)
        padded[:, :t] = False
        x = self._encode(x, padded)[:t].flatten(0, 1)  # [T*Q, LB, C]

        key_pos = self.fq_pos.weight[None, :, None, :].expand(t, q, lb, c).flatten(0, 1)
        query_pos = self.query_embed.weight[:, None].expand(q, lb, c)
        out = self.query_feat.weight[:, None].expand(q, lb, c)
        for cross, self_attn, ffn in zip(self.dec_cross_attn, self.dec_self_attn, self.dec_ffn):
            out = cross(out, x, key_pos, query_pos)
            out = self_attn(out, query_pos)
            out = ffn(out)
        return self.decoder_norm(out).transpose(0, 1).reshape(lyr, b, q, c)

    # --------------------------------------------------------------- windowed temporal encoder
    def _encode(self, x: Tensor, padded: Tensor) -> Tensor:
        for i, (attn, ffn) in enumerate(zip(self.enc_self_attn, self.enc_ffn)):
            shift = (not self.training) and i % 2 == 1  # VITA: shifted windows only at inference
            x = self._window_layer(x, padded, attn, ffn, shift)
        return x

    def _window_layer(self, x: Tensor, padded: Tensor, attn: SelfAttentionLayer, ffn: FFNLayer,
                      shift: bool) -> Tensor:
        t, q, lb, c = x.shape
        w = self.window
        nw = t // w
        half = math.ceil(w / 2)
        if shift:
            x = torch.roll(x, half, 0)
        # [T, Q, LB, C] -> [W*Q, LB*Nw, C]: the tokens of one window form one sequence
        seq = x.view(nw, w, q, lb, c).permute(1, 2, 3, 0, 4).reshape(w * q, lb * nw, c)
        if shift:
            seq = attn(seq, attn_mask=self._shift_mask(padded, q).to(seq.dtype))
        else:
            key_pad = padded.view(lb * nw, w)[..., None].expand(-1, -1, q).flatten(1)
            seq = attn(seq, key_padding_mask=key_pad)
        seq = ffn(seq)
        x = seq.reshape(w, q, lb, nw, c).permute(3, 0, 1, 2, 4).reshape(t, q, lb, c)
        return torch.roll(x, -half, 0) if shift else x

    def _shift_mask(self, padded: Tensor, q: int) -> Tensor:
        """Additive mask (-1000, not -inf, as trained) for shifted windows: [LB*Nw*heads, W*Q, W*Q].

        Blocks padded frames as queries (every window) and as keys (first and last window, the only
        ones that can hold padding), and, in window 0, attention between the wrapped-around first
        half and the rest.
        """
        lb, t = padded.shape
        w = self.window
        nw = t // w
        half = math.ceil(w / 2)
        rolled = torch.roll(padded, half, 1).view(lb, nw, w)
        block = rolled[..., None].expand(lb, nw, w, w).clone()  # [.., i, j]: query frame i padded
        block[:, 0] = block[:, 0] | block[:, 0].transpose(-2, -1)
        block[:, -1] = block[:, -1] | block[:, -1].transpose(-2, -1)
        block[:, 0, :half, half:] = True
        block[:, 0, half:, :half] = True
        block = block.view(lb * nw, 1, w, 1, w, 1).expand(lb * nw, self.nheads, w, q, w, q)
        return block.reshape(lb * nw * self.nheads, w * q, w * q).float() * -1000.0
