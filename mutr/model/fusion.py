"""Early fusion: every visual token attends to the reference tokens before the transformer."""

from __future__ import annotations

from torch import Tensor, nn

from mutr.model import ops
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

    def rows(self, level: Tensor, ref: ReferenceTokens, b: int, t: int) -> Tensor:
        """Inference on a feature map [(b t), C, h, w]: the same [(t h w), b, C] result as
        ``forward`` on its token sequence, computed per chunk of token rows."""
        bt, c, h, w = level.shape
        hw = h * w
        words = ref.features.transpose(0, 1)
        kv = ops.KeyValues(self.multihead_attn, words + ref.pos.transpose(0, 1), words, ref.mask)
        tokens = ops.TokenRows(level, b, t)
        out = level.new_empty(t * hw, b, c)
        for i in range(b):
            for r0, r1 in ops.chunks(t * hw):
                x = tokens.get(i, r0, r1)
                out[r0:r1, i] = x + kv.attend(x, i)
        return out
