"""Optimizer, learning-rate schedule, gradient clipping and mixed precision (architecture.md §16).

AdamW (weight decay 5e-4 on everything) over named parameter groups, in the official order
(§19.7) so an official optimizer state lines up group by group:

=====  ==============================================  =======================
group  parameters                                      lr (official)
=====  ==============================================  =======================
rest   everything else                                 ``lr`` 1e-4
backbone  ``backbone.*``                               ``lr_backbone`` 6e-6
text_encoder ``text_encoder.*``                        ``lr_text_encoder`` 1e-5
linear_proj ``*reference_points*``/``*sampling_offsets*``  ``lr × lr_linear_proj_mult`` (1e-4)
audio_encoder ``audio_encoder.encoder.*`` (mutr only)  ``lr_audio_encoder`` (default ``lr``)
=====  ==============================================  =======================

Only trainable parameters enter; groups are kept even when empty so the layout is the same
whatever is frozen. The schedule is MultiStepLR (γ 0.1) counted in optimizer steps, with an
optional linear warm-up; the official recipe drops at epochs 8 and 10 of 12.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

GROUP_ORDER = ("rest", "backbone", "text_encoder", "linear_proj", "audio_encoder")
LINEAR_PROJ_KEYS = ("reference_points", "sampling_offsets")


@dataclass(frozen=True)
class LearningRates:
    lr: float = 1e-4
    lr_backbone: float = 6e-6
    lr_text_encoder: float = 1e-5
    lr_linear_proj_mult: float = 1.0
    lr_audio_encoder: float | None = None  # None: same as lr
    weight_decay: float = 5e-4


def group_of(name: str) -> str:
    """Which group a parameter name belongs to (first match in the official precedence)."""
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("text_encoder."):
        return "text_encoder"
    if any(k in name for k in LINEAR_PROJ_KEYS):
        return "linear_proj"
    if name.startswith("audio_encoder.encoder."):
        return "audio_encoder"
    return "rest"


def param_groups(model: nn.Module, rates: LearningRates = LearningRates()) -> list[dict]:
    """Named AdamW groups (``name``, ``params``, ``lr``) in ``GROUP_ORDER``; trainable parameters only."""
    lrs = {
        "rest": rates.lr,
        "backbone": rates.lr_backbone,
        "text_encoder": rates.lr_text_encoder,
        "linear_proj": rates.lr * rates.lr_linear_proj_mult,
        "audio_encoder": rates.lr if rates.lr_audio_encoder is None else rates.lr_audio_encoder,
    }
    buckets: dict[str, list[nn.Parameter]] = {g: [] for g in GROUP_ORDER}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # aliased heads appear once
            continue
        seen.add(id(p))
        buckets[group_of(name)].append(p)
    return [{"name": g, "params": buckets[g], "lr": lrs[g]} for g in GROUP_ORDER]


def build_optimizer(model: nn.Module, rates: LearningRates = LearningRates()) -> torch.optim.AdamW:
    groups = param_groups(model, rates)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameter")
    return torch.optim.AdamW(groups, lr=rates.lr, weight_decay=rates.weight_decay)


def multistep_factor(step: int, milestones: Iterable[int], gamma: float = 0.1, warmup_steps: int = 0,
                     warmup_factor: float = 1e-3) -> float:
    """LR multiplier after ``step`` optimizer steps: γ^(milestones passed) × linear warm-up."""
    factor = gamma ** sum(1 for m in milestones if step >= m)
    if warmup_steps > 0 and step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                    warmup_steps: int = 0, warmup_factor: float = 1e-3) -> torch.optim.lr_scheduler.LambdaLR:
    """MultiStepLR in optimizer steps (+ warm-up), as a LambdaLR so its state is two integers.

    Step it once per optimizer step. Its state_dict holds plain numbers only."""
    ms = tuple(sorted(int(m) for m in milestones))

    def factor(step: int) -> float:
        return multistep_factor(step, ms, gamma, warmup_steps, warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm (official: 0.1); returns the norm before clipping. ``max_norm <= 0``
    only measures."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params]))


# ---------------------------------------------------------------------- mixed precision
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """AMP only on CUDA: on CPU fp16/bf16 fall back to fp32 with a warning."""
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        warnings.warn(f"precision {precision} needs a CUDA device; training in fp32 on {device.type}", stacklevel=2)
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A real scaler for fp16 on CUDA; a disabled one (a no-op with an empty state) otherwise."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu",
                                enabled=(precision == "fp16" and device.type == "cuda"))


def steps_for_epochs(epochs: Iterable[float], steps_per_epoch: int) -> list[int]:
    return [int(math.ceil(e * steps_per_epoch)) for e in epochs]


def iter_trainable(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
