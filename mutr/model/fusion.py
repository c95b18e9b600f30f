"""Early fusion: every visual token attends to the reference tokens before the transformer."""

from __future__ import annotations

from torch import Tensor, nn

from mutr.model.reference import ReferenceTokens


class EarlyFusion(nn.Module):
    """One cross-attention shared by all feature levels: visual + attn(visual, reference).

    No norm, dropout or FFN, and no position on the visual queries (as the official module).
    Visual queries only attend to the reference, so the grouping of frames does not matter.
    """

    def __init__(self, d_model: int, nheads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=0.0)

    def forward(self, visual: Tensor, ref: ReferenceTokens) -> Tensor:
        """visual [N, B, C] (any number N of tokens per video) -> [N, B, C]."""
        words = ref.features.transpose(0, 1)  # [L, B, C]
        key = words + ref.pos.transpose(0, 1)
        attended = self.multihead_attn(visual, key, words, key_padding_mask=ref.mask, need_weights=False)[0]
        return visual + attended
