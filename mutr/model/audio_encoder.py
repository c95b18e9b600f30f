"""Audio reference: one VGGish (or small CNN) embedding per 0.96 s example -> reference tokens.

Alignment: example k covers [k*0.96, (k+1)*0.96) s of the audio track; a window of frames uses the
examples overlapping its time span (AVSBench: 5 s <-> 5 frames <-> 5 examples). A sentence token
is prepended so MTA has a query at index 0, as RoBERTa's ``<s>`` is for text: a learned vector
plus the mean of the (unpadded) example tokens. It must depend on the sound: MTA's token 0
becomes every decoder query, and MTA itself only attends to the video, so a constant token 0
would leave classes, boxes and mask-head weights deaf to the audio (measured: a tiny-joint model
trained that way segmented the same object whatever it heard). RoBERTa's ``<s>`` summarises the
sentence through self-attention; the mean is the audio's summary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mutr.config import AudioEncoderConfig
from mutr.errors import InputError
from mutr.model.reference import ReferenceTokens
from mutr.model.text_encoder import FeatureResizer


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig, d_model: int) -> None:
        super().__init__()
        from mutr.model.vggish import build_audio_encoder

        self.encoder = build_audio_encoder(config.kind, frozen=config.freeze)
        self.resizer = FeatureResizer(config.embed_dim, d_model)
        self.sentence = nn.Parameter(torch.empty(1, 1, d_model))
        nn.init.normal_(self.sentence, std=0.02)

    def forward(self, audio: Tensor, audio_mask: Tensor | None = None) -> ReferenceTokens:
        """audio [B, N, 1, 96, 64] VGGish log-mel examples; audio_mask [B, N] True = padding."""
        if audio.dim() != 5 or tuple(audio.shape[2:]) != (1, 96, 64):
            raise InputError(f"audio must be VGGish log-mel examples [B, N, 1, 96, 64], got {tuple(audio.shape)}; "
                             "make them with mutr.model.vggish.waveform_to_examples")
        b, n = audio.shape[:2]
        if n == 0:
            raise InputError("the audio reference has no 0.96 s example; give at least one second of sound")
        device = self.sentence.device
        embeddings = self.encoder(audio.to(device=device, dtype=self.sentence.dtype).flatten(0, 1)).view(b, n, -1)
        if audio_mask is None:
            audio_mask = torch.zeros(b, n, dtype=torch.bool, device=device)
        elif audio_mask.shape != (b, n):
            raise InputError(f"audio_mask must be [B, N] = {(b, n)}, got {tuple(audio_mask.shape)}")
        examples = self.resizer(embeddings)
        keep = (~audio_mask.to(device).bool()).to(examples.dtype)[..., None]  # [B, N, 1]
        summary = (examples * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        tokens = torch.cat([self.sentence.expand(b, 1, -1) + summary, examples], 1)
        mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=device), audio_mask.to(device).bool()], 1)
        return ReferenceTokens.from_features(tokens, mask)
