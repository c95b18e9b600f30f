"""Periodic validation: segment held-out clips the way inference does and score them.

Per clip: one forward pass in eval mode (no padding, batch 1), the official query choice (mean
over frames of sigmoid(class logits), max over classes, argmax over queries), the chosen query's
mask logits resized bilinearly to the frame size, > 0 (probability > 0.5). Scores on the
annotated frames: J (region similarity) and F (boundary F-measure) of ``mutr.metrics.davis``,
averaged per clip, then over clips; J&F = (J + F) / 2. Audio datasets also get the AVSBench
mIoU and F-score (``mutr.metrics.avsbench``; these are what AVSBench papers call J and F).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mutr.metrics.avsbench import AVSBenchMeter
from mutr.metrics.davis import boundary_f_measure, region_similarity
from mutr.postprocess import select_query


@dataclass
class ClipScore:
    source: str
    j: float
    f: float
    query: int


@dataclass
class ValidationResult:
    name: str
    modality: str
    clips: list[ClipScore] = field(default_factory=list)
    avs_miou: float | None = None
    avs_fscore: float | None = None

    @property
    def j(self) -> float:
        return float(np.mean([c.j for c in self.clips])) if self.clips else float("nan")

    @property
    def f(self) -> float:
        return float(np.mean([c.f for c in self.clips])) if self.clips else float("nan")

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def metrics(self) -> dict[str, float]:
        out = {f"{self.name}/J": self.j, f"{self.name}/F": self.f, f"{self.name}/J&F": self.jf}
        if self.avs_miou is not None:
            out[f"{self.name}/mIoU"] = self.avs_miou
            out[f"{self.name}/F-score"] = self.avs_fscore
        return out


def reference_kwargs(model: torch.nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """The model's reference inputs for a ``ClipBatch``: token ids for captions, else audio."""
    if batch.captions is not None:
        input_ids, attention_mask = model.tokenize(batch.captions)
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if batch.audio is None:
        raise ValueError("a batch has neither captions nor audio")
    return {"audio": batch.audio.to(device),
            "audio_mask": None if batch.audio_mask is None else batch.audio_mask.to(device)}


@torch.no_grad()
def predict_clip(model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[Tensor, int]:
    """Mask logits [T, H, W] at the (unpadded) frame size of a 1-clip batch, and the chosen query."""
    frames = batch.frames.to(device)
    out = model(frames, batch.mask.to(device), **reference_kwargs(model, batch, device))
    q, _ = select_query(out.pred_logits[0])
    unpadded = ~batch.mask[0, 0]  # [H, W]
    h, w = int(unpadded.any(1).sum()), int(unpadded.any(0).sum())
    logits = out.pred_masks[0, :, q].float()  # [T, h/4, w/4]
    ph, pw = frames.shape[-2:]
    full = F.interpolate(logits[:, None], size=(ph, pw), mode="bilinear", align_corners=False)[:, 0]
    return full[:, :h, :w].cpu(), q


def evaluate_clips(model: torch.nn.Module, samples: Iterable[Any], *, name: str, device: torch.device,
                   collate: Callable[[Sequence[Any]], Any], avsbench: bool | None = None) -> ValidationResult:
    """Score ``ClipSample``s one by one (model in eval mode; its mode is restored after)."""
    was_training = model.training
    model.eval()
    result: ValidationResult | None = None
    meter: AVSBenchMeter | None = None
    try:
        for sample in samples:
            batch = collate([sample])
            modality = "text" if batch.captions is not None else "audio"
            if result is None:
                result = ValidationResult(name, modality)
                if avsbench or (avsbench is None and modality == "audio"):
                    meter = AVSBenchMeter()
            logits, q = predict_clip(model, batch, device)
            tgt = sample.target
            gt = tgt["masks"].bool()
            keep = tgt.get("has_gt", torch.ones(gt.shape[0], dtype=torch.bool)).bool()
            pred = (logits > 0).numpy()[keep.numpy()]
            g = gt.numpy()[keep.numpy()]
            j = float(np.mean(region_similarity(g, pred)))
            f = float(np.mean(boundary_f_measure(g, pred)))
            result.clips.append(ClipScore(sample.source, j, f, q))
            if meter is not None:
                meter.update(logits[keep], gt[keep].float())
    finally:
        model.train(was_training)
    if result is None:
        return ValidationResult(name, "none")
    if meter is not None:
        scores = meter.compute()
        result.avs_miou, result.avs_fscore = scores.miou, scores.fscore
    return result
