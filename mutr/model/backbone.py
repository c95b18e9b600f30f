"""Multi-scale visual features: transformers' ``AutoBackbone`` (ResNet with frozen batch norm,
PVTv2) or a backbone family of ``mutr.model.backbones`` (one module per family of the released
checkpoints).

MUTR uses four levels (strides 4, 8, 16, 32): res2 feeds only the pixel decoder, res3..res5 (and a
stride-64 level made from res5) feed the transformer.

A family module ``mutr.model.backbones.<kind>`` provides
  ``build(config: BackboneConfig) -> nn.Module``: a body with ``channels`` (4 ints) and
      ``temporal`` (True when a frame's features depend on the other frames of its clip), whose
      ``forward(images [B*T, 3, H, W], frames=T)`` returns the four maps;
  ``convert_official(state) -> state``: the official ``backbone.0.*`` tensors (prefix removed)
      -> this module's ``body.*`` tensors (every key used, derived buffers checked and dropped);
  ``convert_pretrained(state) -> state``: the official recipe's ImageNet / Kinetics backbone file
      -> ``body.*`` tensors, for training from it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import BackboneConfig
from mutr.errors import ConfigError
from mutr.model import kernels

_HF_CONFIGS = {
    "resnet": "ResNetConfig",
    "pvt_v2": "PvtV2Config",
}
# Kinds built by a module of mutr.model.backbones (see the module docstring).
FAMILIES: tuple[str, ...] = ("swin", "convnext", "video_swin", "convmae")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine, all buffers (as torchvision's, eps 1e-5).

    y = x * s + (b - m * s) with s = w / sqrt(var + eps): the same arithmetic as torchvision's
    ``ops.FrozenBatchNorm2d``, so converted official weights give identical features.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        frozen = cls(bn.num_features, 1e-5)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def _freeze_batch_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batch_norm(child))
        else:
            _freeze_batch_norms(child)


def family(kind: str) -> ModuleType | None:
    """The ``mutr.model.backbones`` module of a backbone kind; None for the AutoBackbone kinds."""
    if kind in _HF_CONFIGS:
        return None
    if kind not in FAMILIES:
        raise ConfigError(f"unknown backbone kind {kind!r}; use one of {sorted(set(_HF_CONFIGS) | set(FAMILIES))}")
    return importlib.import_module(f"mutr.model.backbones.{kind}")


class Backbone(nn.Module):
    """Frames [B*T, 3, H, W] of B clips of T frames -> four feature maps [B*T, C_l, H/s_l, W/s_l],
    s = 4, 8, 16, 32. ``temporal`` backbones mix the frames of a clip, so their features of a
    frame depend on which clip it is in (callers must not reuse them across clips)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        own = family(config.kind)
        self.kind = config.kind
        self.temporal = False
        self._own = own is not None
        if own is not None:
            self.body = own.build(config)
            self.channels: list[int] = list(self.body.channels)
            self.temporal = bool(self.body.temporal)
            return
        import transformers
        from transformers import AutoBackbone

        out_features = ["stage1", "stage2", "stage3", "stage4"]
        if config.pretrained:
            self.body = AutoBackbone.from_pretrained(config.pretrained, out_features=out_features)
        else:
            hf_config = getattr(transformers, _HF_CONFIGS[config.kind])(**config.params, out_features=out_features)
            self.body = AutoBackbone.from_config(hf_config)
        _freeze_batch_norms(self.body)
        self._packed = kernels.PackedWeights(size=2 * len(list(self.body.modules())))
        self.channels: list[int] = list(self.body.channels)
        if config.trainable:
            for name, param in self.body.named_parameters():
                param.requires_grad_(any(key in name for key in config.trainable))

    def load_pretrained(self, state: dict[str, Tensor]) -> list[str]:
        """Load a family's official pretraining file (its ImageNet / Kinetics backbone state, already
        read by the caller) through the family's ``convert_pretrained``; returns the names left at
        their init (those the official recipe leaves too, e.g. output norms). Reading the file and
        resolving a registry name happen above the model (the trainer)."""
        from mutr.errors import CheckpointError

        own = family(self.kind)
        if own is None:
            raise ConfigError(f"backbone kind {self.kind!r} takes pretrained weights through "
                              "backbone.pretrained (an HF Hub id or folder), not an official pretraining file")
        converted = {k[len("body."):]: v for k, v in own.convert_pretrained(state).items()}
        expected = self.body.state_dict()
        unexpected = sorted(set(converted) - set(expected))
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in converted.items()
                 if k in expected and v.shape != expected[k].shape]
        if unexpected or wrong:
            detail = "; ".join(f"{label}: {', '.join(items[:4])}" for label, items in
                               (("unexpected", unexpected), ("wrong shape", wrong)) if items)
            raise CheckpointError(f"the pretrained backbone file does not fit this {self.kind} backbone ({detail}); "
                                  "use the file of the preset's official recipe (`mutr download --list`, kind backbone)")
        self.body.load_state_dict(converted, strict=False)
        return sorted(set(expected) - set(converted))

    def forward(self, images: Tensor, frames: int = 1) -> list[Tensor]:
        if self._own:
            return list(self.body(images, frames=frames))
        if kernels.inference(images, *self.body.parameters()) and _is_plain_resnet(self.body):
            if kernels.autocast_dtype(images.device.type) is not None:
                return _fused_resnet(self.body, images, self._packed)
            return _inplace_resnet(self.body, images)
        return list(self.body(images).feature_maps)


def _is_plain_resnet(body: nn.Module) -> bool:
    """transformers' ResNetBackbone with bottleneck/basic blocks, ReLU and frozen batch norms,
    returning stage1..stage4: the layout the fused forward below walks."""
    config = getattr(body, "config", None)
    return (type(body).__name__ == "ResNetBackbone" and getattr(config, "hidden_act", None) == "relu"
            and list(getattr(body, "out_features", [])) == ["stage1", "stage2", "stage3", "stage4"]
            and all(isinstance(m, FrozenBatchNorm2d) for m in body.modules() if "Norm" in type(m).__name__))


def _inplace_resnet(body: nn.Module, images: Tensor) -> list[Tensor]:
    """The ResNet forward with the official arithmetic (NCHW convolution, then x * s + t, then
    ReLU) done in place: bitwise the module forward, without allocating every intermediate twice.

    (Folding the batch norm into the convolution and running channels-last is ~2x faster but
    rounds differently; the exact mode keeps these features bitwise equal to the official
    model's, the fast mode folds.)"""

    def conv_bn(layer: nn.Module, x: Tensor) -> Tensor:
        conv, bn = layer.convolution, layer.normalization
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        bias = bn.bias - bn.running_mean * scale
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return y.mul_(scale.reshape(1, -1, 1, 1).to(y.dtype)).add_(bias.reshape(1, -1, 1, 1).to(y.dtype))

    stem = body.embedder
    x = stem.pooler(conv_bn(stem.embedder, images).relu_())
    feats = []
    for stage in body.encoder.stages:
        for block in stage.layers:
            shortcut = x if isinstance(block.shortcut, nn.Identity) else conv_bn(block.shortcut, x)
            h = x
            for i, conv_layer in enumerate(block.layer):
                h = conv_bn(conv_layer, h)
                if i < len(block.layer) - 1:
                    h = h.relu_()
            x = h.add_(shortcut).relu_()
        feats.append(x)
    return feats


def _folded(conv: nn.Conv2d, bn: FrozenBatchNorm2d, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Frozen batch norm folded into the convolution: conv(x, w * s) + (b - m * s), s = w_bn / sqrt(v + eps)."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    bias = bn.bias - bn.running_mean * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return weight.to(dtype).contiguous(memory_format=torch.channels_last), bias.to(dtype)


def _conv_layer(layer: nn.Module, x: Tensor, relu: bool, cache: dict, residual: Tensor | None = None) -> Tensor:
    """conv + frozen BN [+ residual] [+ ReLU] of a ResNetConvLayer / ResNetShortCut, one oneDNN call
    where available (channels-last in, channels-last out)."""
    conv, bn = layer.convolution, layer.normalization
    fused = kernels.mkldnn_fusion(x)

    def build():
        weight, bias = _folded(conv, bn, x.dtype)
        return (kernels.pack_conv_weight(weight, conv, x.shape) if fused else weight), bias

    weight, bias = cache["store"].get((id(layer), cache["key"]),
                                      (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var), build)
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if fused:
        if residual is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, weight, bias, *args, "add", 1.0, "relu" if relu else None, [], "")
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "relu" if relu else "none", [], "")
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        y += residual
    return F.relu_(y) if relu else y


def _fused_resnet(body: nn.Module, images: Tensor, store: kernels.PackedWeights) -> list[Tensor]:
    """The ResNet forward with folded batch norms, channels-last activations and fused
    bias/residual/ReLU: the same function as ``body(images)`` up to float rounding, without the
    separate normalisation, addition and activation passes over every feature map."""
    dtype = kernels.autocast_dtype(images.device.type) or images.dtype  # autocast does not see oneDNN ops
    x = images.to(dtype).contiguous(memory_format=torch.channels_last)
    # packed weights depend on the dtype and (for the kernel choice) the frame size
    cache = {"store": store, "key": (dtype, images.device, tuple(images.shape[-2:]))}
    stem = body.embedder
    x = stem.pooler(_conv_layer(stem.embedder, x, True, cache))
    feats = []
    for stage in body.encoder.stages:
        for block in stage.layers:
            shortcut = x if isinstance(block.shortcut, nn.Identity) else _conv_layer(block.shortcut, x, False, cache)
            h = x
            for i, conv_layer in enumerate(block.layer):
                last = i == len(block.layer) - 1
                h = _conv_layer(conv_layer, h, True, cache, residual=shortcut if last else None)
            x = h
        feats.append(x)
    return feats
