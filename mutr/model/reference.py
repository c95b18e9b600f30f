"""Reference tokens: the one type that text and audio both become.

Early fusion, MTA, the transformer, MTI, the pixel decoder and the heads only ever see this type,
so nothing downstream branches on the modality: the "unified" in MUTR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mutr.model.position_encoding import sine_1d


@dataclass
class ReferenceTokens:
    """``features`` [B, L, C]; ``mask`` [B, L] True = padding; ``pos`` [B, L, C] (1-D sine).

    Token 0 is the sentence-level query that MTA refines (text: RoBERTa's ``<s>``; audio: a
    learned token plus the mean of the per-second embeddings, prepended to them).
    """

    features: Tensor
    mask: Tensor
    pos: Tensor

    @classmethod
    def from_features(cls, features: Tensor, mask: Tensor) -> "ReferenceTokens":
        return cls(features, mask, sine_1d(mask, features.shape[-1]).to(features.dtype))

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ReferenceTokens":
        return ReferenceTokens(self.features.to(device=device, dtype=dtype), self.mask.to(device=device),
                               self.pos.to(device=device, dtype=dtype))

    def expand(self, batch_size: int) -> "ReferenceTokens":
        """Repeat a single reference (B=1) for a batch of videos."""
        if self.batch_size == batch_size:
            return self
        return ReferenceTokens(self.features.expand(batch_size, -1, -1), self.mask.expand(batch_size, -1),
                               self.pos.expand(batch_size, -1, -1))

    def select(self, index: int) -> "ReferenceTokens":
        sl = slice(index, index + 1)
        return ReferenceTokens(self.features[sl], self.mask[sl], self.pos[sl])
