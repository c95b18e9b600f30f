"""Deformable DETR encoder-decoder, run per frame (batch = B*T), with iterative box refinement.

The decoder's content queries are MUTR's sentence query copied to every query slot and frame; the
positional queries are a learned embedding [Q, C]. With box refinement the references become boxes
after the first layer and ``bbox_embed[l]`` (the heads' own modules) refines them layer by layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import TransformerConfig
from mutr.model import kernels, ops
from mutr.model.deformable_attention import MSDeformAttn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        c = cfg.d_model
        self.self_attn = MSDeformAttn(c, cfg.num_feature_levels, cfg.nheads, cfg.enc_n_points)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(c)
        self.linear1 = nn.Linear(c, cfg.dim_feedforward)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.linear2 = nn.Linear(cfg.dim_feedforward, c)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(c)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]],
                padding_mask: Tensor | None) -> Tensor:
        if not self.training and kernels.inference(src, *self.parameters()):  # (training: dropout)
            return self._rows(src, pos, reference, shapes, padding_mask)
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference, src, shapes, padding_mask)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))

    def _rows(self, src: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]],
              padding_mask: Tensor | None) -> Tensor:
        """Inference: the value table over all tokens first, then everything else (sampling,
        output projection, norms, FFN) per chunk of the (frame, token) rows, in cache."""
        n, s, c = src.shape
        attn = self.self_attn
        table = attn.value_table(src, shapes, padding_mask)
        flat, flat_pos, flat_ref = src.reshape(n * s, c), pos.reshape(n * s, c), reference.reshape(n * s, -1, 2)
        out = torch.empty_like(flat)
        n1, n2 = self.norm1, self.norm2
        for r0, r1 in ops.chunks(n * s):
            x = flat[r0:r1]
            pixels, weights = attn.locations(x + flat_pos[r0:r1], flat_ref[r0:r1], shapes)
            sampled = attn.sample_rows(table, s, r0, r1, pixels, weights, shapes)
            x = F.layer_norm(x + kernels.linear(sampled, attn.output_proj), (c,), n1.weight, n1.bias, n1.eps)
            out[r0:r1] = F.layer_norm(x + ops.ffn(x, self.linear1, self.linear2), (c,), n2.weight, n2.bias, n2.eps)
        return out.view(n, s, c)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        c = cfg.d_model
        self.cross_attn = MSDeformAttn(c, cfg.num_feature_levels, cfg.nheads, cfg.dec_n_points)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(c)
        self.self_attn = nn.MultiheadAttention(c, cfg.nheads, dropout=cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(c)
        self.linear1 = nn.Linear(c, cfg.dim_feedforward)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.linear2 = nn.Linear(cfg.dim_feedforward, c)
        self.dropout4 = nn.Dropout(cfg.dropout)
        self.norm3 = nn.LayerNorm(c)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                shapes: list[tuple[int, int]], padding_mask: Tensor | None) -> Tensor:
        """tgt, query_pos [N, Q, C]; reference [N, Q, levels, 2|4]; memory [N, S, C]."""
        qk = (tgt + query_pos).transpose(0, 1)
        attended = self.self_attn(qk, qk, tgt.transpose(0, 1), need_weights=False)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attended))
        sampled = self.cross_attn(tgt + query_pos, reference, memory, shapes, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(sampled))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


def valid_ratios(mask: Tensor) -> Tensor:
    """[N, h, w] padding mask -> [N, 2] unpadded fraction (w, h), counted on row 0 / column 0."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def encoder_reference_points(shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Pixel centres normalised by each level's valid size -> [N, S, levels, 2]."""
    points = []
    for level, (h, w) in enumerate(shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=ratios.device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (ratios[:, None, level, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class DeformableTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, cfg.d_model))
        self.reference_points = nn.Linear(cfg.d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], masks: list[Tensor], poses: list[Tensor], tgt: Tensor,
                query_embed: Tensor, bbox_embed: nn.ModuleList | None = None
                ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """srcs/poses: per level [N, C, h, w]; masks [N, h, w]; tgt [N, Q, C] content queries;
        query_embed [Q, C]; ``bbox_embed`` (the box heads, owned by MUTR) enables box refinement.

        Returns hs [layers, N, Q, C], memory maps of levels 0..L-2 [N, C, h, w], the initial
        reference [N, Q, 2] and the reference after each layer [layers, N, Q, 2|4].
        """
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                              for lvl, p in enumerate(poses)], 1)
        ratios = torch.stack([valid_ratios(m) for m in masks], 1)  # [N, levels, 2]

        memory = src_flat
        if kernels.enabled() and not mask_flat.any():
            mask_flat = None  # zeroing nothing: skip the masked_fill passes over the values
        enc_ref = encoder_reference_points(shapes, ratios)
        for layer in self.encoder.layers:
            memory = layer(memory, pos_flat, enc_ref, shapes, mask_flat)

        n = tgt.shape[0]
        query_pos = query_embed.unsqueeze(0).expand(n, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()
        init_reference = reference
        hs, references = [], []
        output = tgt
        for lid, layer in enumerate(self.decoder.layers):
            if reference.shape[-1] == 4:
                ref_in = reference[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
            else:
                ref_in = reference[:, :, None] * ratios[:, None]
            output = layer(output, query_pos, ref_in, memory, shapes, mask_flat)
            if bbox_embed is not None:
                delta = bbox_embed[lid](output)
                if reference.shape[-1] == 4:
                    reference = (delta + inverse_sigmoid(reference)).sigmoid()
                else:
                    reference = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
                reference = reference.detach()
            hs.append(output)
            references.append(reference)

        maps, start = [], 0
        c = memory.shape[-1]
        for h, w in shapes[:-1]:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(n, c, h, w))
            start += h * w
        return torch.stack(hs), maps, init_reference, torch.stack(references)
