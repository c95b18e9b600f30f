"""Multi-scale visual features from transformers' ``AutoBackbone`` with frozen batch norm.

MUTR uses four levels (strides 4, 8, 16, 32): res2 feeds only the pixel decoder, res3..res5 (and a
stride-64 level made from res5) feed the transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mutr.config import BackboneConfig
from mutr.errors import ConfigError

_HF_CONFIGS = {
    "resnet": "ResNetConfig",
    "swin": "SwinConfig",
    "convnext": "ConvNextConfig",
    "pvt_v2": "PvtV2Config",
}


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


class Backbone(nn.Module):
    """Image batch [N, 3, H, W] -> four feature maps [N, C_l, H/s_l, W/s_l], s = 4, 8, 16, 32."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        import transformers
        from transformers import AutoBackbone

        if config.kind not in _HF_CONFIGS:
            raise ConfigError(f"unknown backbone kind {config.kind!r}; use one of {sorted(_HF_CONFIGS)}")
        out_features = ["stage1", "stage2", "stage3", "stage4"]
        if config.pretrained:
            self.body = AutoBackbone.from_pretrained(config.pretrained, out_features=out_features)
        else:
            hf_config = getattr(transformers, _HF_CONFIGS[config.kind])(**config.params, out_features=out_features)
            self.body = AutoBackbone.from_config(hf_config)
        _freeze_batch_norms(self.body)
        self.channels: list[int] = list(self.body.channels)
        if config.trainable:
            for name, param in self.body.named_parameters():
                param.requires_grad_(any(key in name for key in config.trainable))

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(images).feature_maps)
