"""The official per-clip inference protocol, with each clip's frames encoded once.

Every benchmark runs several references over the same frames (Ref-DAVIS: four annotator sets of
every object; Ref-YouTube-VOS: every expression of a video). ``MUTR.forward`` is
``encode_video`` followed by ``decode``, and only ``decode`` depends on the reference, so the
backbone runs once per clip and ``decode`` once per reference. The rest is
:func:`mutr.postprocess.predict_clip` step for step (architecture.md §14): Resize(432) PIL +
ImageNet normalisation, one query per clip (sigmoid, mean over T, max over K, argmax over Q), its
mask logits resized bilinearly (align_corners=False) directly to the original frame size.
Logits rather than probabilities come back because AVSBench's metrics take logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mutr.errors import ConfigError
from mutr.io.transforms import INFERENCE_SIZE, preprocess
from mutr.model.mutr import MUTR, VisualFeatures
from mutr.model.reference import ReferenceTokens
from mutr.postprocess import select_query, upsample_logits
from mutr.predictor import resolve_device

__all__ = ["ClipRunner", "EncodedClip"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EncodedClip:
    """One clip's reference-independent features and its frames' original (H, W)."""

    visual: VisualFeatures
    size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return self.visual.num_frames


class ClipRunner:
    """Runs ``model`` on ``device`` in ``precision`` ("fp32", or "bf16"/"fp16" autocast).

    ``calls`` counts decodes (one per clip and reference), the unit the official scripts call a
    forward pass.
    """

    def __init__(self, model: MUTR, *, device: str | torch.device = "auto", precision: str = "fp32",
                 size: int = INFERENCE_SIZE) -> None:
        if precision not in _DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        self.device = resolve_device(device)
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bfloat16 support: pass --precision fp16 or fp32")
        self.model = model.to(self.device).eval()
        self.precision, self.size, self.calls = precision, size, 0

    def _context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(self.device.type, dtype=_DTYPES[self.precision],
                                           enabled=self.precision != "fp32"))
        return stack

    def encode_video(self, frames: Sequence) -> EncodedClip:
        """Frames (PIL or [H, W, 3] uint8, one size) -> the clip's features."""
        first = frames[0]
        size = (first.height, first.width) if hasattr(first, "width") else tuple(first.shape[:2])
        video = preprocess(frames, self.size)[None].to(self.device)  # [1, T, 3, h, w]
        with self._context():
            return EncodedClip(self.model.encode_video(video), size)

    def text(self, text: str) -> ReferenceTokens:
        """A caption as given (the official scripts pass captions raw)."""
        with self._context():
            return self.model.encode_reference(texts=[text])

    def audio(self, examples: np.ndarray | Tensor) -> ReferenceTokens:
        """VGGish log-mel examples [N, 1, 96, 64] (or [N, 96, 64]), example t paired with frame t."""
        a = torch.as_tensor(np.asarray(examples, dtype=np.float32))
        a = a[:, None] if a.dim() == 3 else a
        with self._context():
            return self.model.encode_reference(audio=a[None].to(self.device))

    def mask_logits(self, clip: EncodedClip, reference: ReferenceTokens) -> Tensor:
        """The selected query's mask logits [T, H, W] float32 (CPU) at the original frame size."""
        with self._context():
            out = self.model.decode(clip.visual, reference)
            query, _ = select_query(out.pred_logits[0])
            logits = upsample_logits(out.pred_masks[0, :, query], clip.size)
        self.calls += 1
        return logits.float().cpu()
