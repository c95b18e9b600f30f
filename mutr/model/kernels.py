"""mutr's inference paths: exact mode (the default), fast mode (autocast), and the plain formulation.

**Exact mode** (fp32, no autocast; what ``model(...)`` does under ``torch.no_grad()`` or
``torch.inference_mode()``) computes the official model's arithmetic with less memory traffic and
fewer ops: the ResNet with in-place batch norm/ReLU/residual, early fusion, the deformable
encoder layers and the FPN blocks over large chunks of token rows with in-place ReLU (ops.py),
the dynamic mask head as products per frame instead of a grouped convolution over a
[frames * queries * 258, h, w] copy, position maps computed once per clip. All of that is
bitwise the module forward (tests/model/test_fast_paths.py) except parts that compute the same
function with other rounding, each as accurate as the official formulation against float64: the
deformable sampling (``embedding_bag`` instead of ``grid_sample``) and the mask head's first
layer, into which the pixel decoder's last convolution is folded (a 1x1 layer after a 3x3
convolution is one 3x3 convolution: 40 output channels per frame instead of 256).
tests/test_official_equivalence.py holds exact mode within 1e-4 of the official model.

**Fast mode** is ``torch.autocast``: on CPU ``torch.autocast("cpu", dtype=torch.bfloat16)``, on
CUDA bf16 or fp16. Weights stay fp32 (the predictor's ``precision="bf16"`` does exactly this)::

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, input_ids=ids)

It adds what changes the rounding beyond bf16 products: frozen batch norm folded into
channels-last oneDNN convolutions with fused bias/residual/ReLU, the key/value side of
attention to the (few) reference tokens folded into the query side, FFN product + ReLU as one
oneDNN call, weights cast to bf16 once (autocast re-casts every weight on every call under
``inference_mode``). Sampling positions, softmaxes, LayerNorm/GroupNorm statistics and the mask
head's pixel offsets stay float32, and so do the prediction heads: outputs are float32.

Training (autograd recording) always takes the plain module path (on CPU, deformable sampling
through ``grid_sample``, whose backward is fast there). ``reference_kernels()`` forces
the plain path for inference too, for tests and for bisecting a numerical question::

    with mutr.model.kernels.reference_kernels():
        out = model(video, input_ids=ids)
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


def cast_cached(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, cached on the tensor until it changes (for weights handed to ops that
    autocast does not cast)."""
    if t.dtype == dtype:
        return t
    if t.is_inference() or not t.is_leaf:  # no version counter / a temporary: nothing to cache
        return t.to(dtype)
    stamp = (t._version, t.data_ptr(), dtype)
    hit = getattr(t, "_mutr_cast", None)
    if hit is None or hit[0] != stamp:
        hit = (stamp, t.detach().to(dtype))
        t._mutr_cast = hit
    return hit[1]


def weight(t: torch.Tensor | None, like: torch.Tensor | None = None) -> torch.Tensor | None:
    """A weight for a matrix product or convolution: under autocast, the autocast dtype cached once
    (autocast itself re-casts every weight on every call in inference mode); else as is. A weight
    autograd records for is returned as is too: the cached copy is detached (autocast's own cast
    inside the op keeps the gradient)."""
    if t is None:
        return None
    if torch.is_grad_enabled() and t.requires_grad:
        return t
    dtype = autocast_dtype(t.device.type)
    return t if dtype is None or not t.is_floating_point() else cast_cached(t, dtype)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)`` with cached autocast weights (see ``weight``)."""
    return torch.nn.functional.linear(x, weight(layer.weight), weight(layer.bias))


def conv2d(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` with cached autocast weights (see ``weight``)."""
    return torch.nn.functional.conv2d(x, weight(conv.weight), weight(conv.bias), conv.stride, conv.padding,
                                      conv.dilation, conv.groups)
