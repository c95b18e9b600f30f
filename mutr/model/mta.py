"""MTA: multi-scale temporal aggregation of the reference over the visual features of all frames.

The paper describes one block per scale; the released weights have a single layer applied to the
four scales in turn (stride 8, 16, 32, 64), so this module is one shared post-norm layer
(cross-attention + FFN, no self-attention) and ``forward`` loops over the scales.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from mutr.model.reference import ReferenceTokens


class MTALayer(nn.Module):
    def __init__(self, d_model: int, nheads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=0.0)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor, pos: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """tokens, pos [L, B, C]; memory [T*h*w, B, C] with no position; memory_mask [B, T*h*w]."""
        attended = self.multihead_attn(tokens + pos, memory, memory, key_padding_mask=memory_mask,
                                       need_weights=False)[0]
        tokens = self.norm1(tokens + attended)
        return self.norm2(tokens + self.linear2(F.relu(self.linear1(tokens))))


class MTA(nn.Module):
    """Reference tokens attend to the *unfused* projected maps of every scale, all frames at once.

    Returns the sentence query [B, C]: token 0 of the result. The other refined tokens are not used
    downstream (the official model discards them too).
    """

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.layer = MTALayer(d_model, nheads, dim_feedforward)

    def forward(self, ref: ReferenceTokens, levels: list[Tensor], masks: list[Tensor], num_frames: int) -> Tensor:
        """levels: per scale [B*T, C, h, w]; masks: per scale [B*T, h, w] (True = padding)."""
        tokens = ref.features.transpose(0, 1)
        pos = ref.pos.transpose(0, 1)
        for level, mask in zip(levels, masks):
            bt, c, h, w = level.shape
            b = bt // num_frames
            # [(b t), c, h, w] -> [(t h w), b, c]: one sequence per video over all its frames
            memory = level.reshape(b, num_frames, c, h * w).permute(1, 3, 0, 2).reshape(num_frames * h * w, b, c)
            memory_mask = mask.reshape(b, num_frames * h * w)
            tokens = self.layer(tokens, pos, memory, memory_mask)
        return tokens[0]
