"""Switch between mutr's optimised inference paths and the plain module-by-module formulation.

The optimised paths (on by default) compute the same functions as the official code with other
kernels and layouts: frozen batch norm folded into the convolutions (channels-last, oneDNN fused
bias/ReLU/residual), deformable sampling with ``embedding_bag``, row-chunked FFNs with in-place
ReLU, the dynamic mask head as one matrix product per frame instead of a per-query grouped
convolution, and fewer layout copies. They differ from the plain formulation by float rounding
only (tests/model/test_fast_paths.py bounds it; tests/test_official_equivalence.py holds both
within 1e-4 of the official model).

``reference_kernels()`` turns them off, for tests and for bisecting a numerical question::

    with mutr.model.kernels.reference_kernels():
        out = model(video, input_ids=ids)

Fast mode (bf16 on CPU, bf16/fp16 on CUDA) is ``torch.autocast``; it uses the same switch.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_state = threading.local()


def enabled() -> bool:
    """True unless inside ``reference_kernels()``."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def reference_kernels(active: bool = True) -> Iterator[None]:
    """Run the plain module-by-module formulation while the block runs (this thread)."""
    previous = enabled()
    _state.enabled = not active
    try:
        yield
    finally:
        _state.enabled = previous


def inference(*tensors: torch.Tensor) -> bool:
    """The optimised inference paths apply: switch on and no autograd graph to build."""
    return enabled() and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def mkldnn_fusion(x: torch.Tensor) -> bool:
    """oneDNN fused convolution ops (CPU builds with mkldnn, float32/bfloat16)."""
    return (x.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and x.dtype in (torch.float32, torch.bfloat16) and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower-precision dtype of an active autocast on this device type, else None."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class PackedWeights:
    """Inference-time cache of derived weights (folded, cast, oneDNN-packed), rebuilt whenever a
    source tensor changes (storage or in-place version), per (dtype, input size) key; keeps the
    ``size`` most recent keys. Never used while autograd records."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.entries: dict = {}

    def get(self, key, sources: tuple[torch.Tensor, ...], build):
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        hit = self.entries.pop(key, None)
        if hit is None or hit[0] != stamp:
            hit = (stamp, build())
        self.entries[key] = hit  # most recent last
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))
        return hit[1]


def pack_conv_weight(weight: torch.Tensor, conv: torch.nn.Conv2d, input_shape) -> torch.Tensor:
    """A convolution weight in oneDNN's blocked layout for this input size (spares the reorder that
    every eager call would otherwise do)."""
    try:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.contiguous().to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, list(input_shape))
    except (RuntimeError, AttributeError):
        return weight.contiguous(memory_format=torch.channels_last)
