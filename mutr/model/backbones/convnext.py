"""ConvNeXt (Liu et al. 2022) as in the released ConvNeXt-L MUTR checkpoint: transformers'
``ConvNextBackbone``.

The official backbone (``models/convnext.py``, ``--backbone convnext_large``) is timm's ConvNeXt
(stem 4x4 conv + LayerNorm, blocks dw 7x7 conv -> LayerNorm -> Linear 4C -> GELU -> Linear ->
layer scale ``gamma`` -> residual, LayerNorm + 2x2 conv between stages, all LayerNorms eps 1e-6)
with ``norm_pre``/``head`` removed, plus one ``nn.LayerNorm`` per output over channels
(``norm_layers.0..3``, eps 1e-5). transformers' ``ConvNextBackbone`` is the same network with
other names (``layer_scale_parameter`` = ``gamma``, ``pwconv1/2`` = ``mlp.fc1/2``); its output
norms ``hidden_states_norms`` take the place of ``norm_layers``, with their eps set to the
official 1e-5 (transformers builds them with 1e-6). Frames are independent.
"""

from __future__ import annotations

import re

from torch import Tensor, nn
from transformers import ConvNextBackbone, ConvNextConfig

from mutr.config import BackboneConfig
from mutr.errors import CheckpointError

_OUT = ["stage1", "stage2", "stage3", "stage4"]
OUTPUT_NORM_EPS = 1e-5  # nn.LayerNorm's default, as the official norm_layers


class ConvNextBody(ConvNextBackbone):
    """ConvNextBackbone returning the four normed maps [B*T, C_l, H/s, W/s], s = 4..32."""

    temporal = False  # frames are independent

    def __init__(self, params: dict) -> None:
        super().__init__(ConvNextConfig(**params, out_features=_OUT))
        for norm in self.hidden_states_norms.values():
            norm.eps = OUTPUT_NORM_EPS

    def forward(self, images: Tensor, frames: int = 1) -> list[Tensor]:  # type: ignore[override]
        """images [B*T, 3, H, W] -> four maps; ``frames`` is unused (frames are independent)."""
        return list(super().forward(images).feature_maps)


def build(config: BackboneConfig) -> nn.Module:
    return ConvNextBody(dict(config.params))


# timm ConvNeXt names (the official body.*) -> transformers' names
_RULES: list[tuple[str, str]] = [
    (r"^stem\.0\.", "embeddings.patch_embeddings."),
    (r"^stem\.1\.", "embeddings.layernorm."),
    (r"^stages\.(\d+)\.downsample\.(\d)\.", r"encoder.stages.\1.downsampling_layer.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"encoder.stages.\1.layers.\2.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"encoder.stages.\1.layers.\2.layernorm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"encoder.stages.\1.layers.\2.pwconv\3."),
]
# Facebook's ConvNeXt release layout -> timm's (what the official checkpoint_filter_fn does)
_FB_RULES: list[tuple[str, str]] = [
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d+)\.(\d+)\.pwconv(\d)\.", r"stages.\1.blocks.\2.mlp.fc\3."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def _convert_timm(state: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        name = _rename(key, _RULES)
        if name is None:
            raise CheckpointError(f"{what}: unexpected key {key!r}; not a ConvNeXt backbone")
        out["body." + name] = value
    return out


def convert_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``backbone.0.*`` (prefix removed: ``body.stages.0.blocks.0.gamma``,
    ``norm_layers.0.weight``, ...) -> ``body.*`` of `ConvNextBody`; every key is used."""
    norms = {}
    body = {}
    for key, value in state.items():
        match = re.match(r"^norm_layers\.(\d)\.(weight|bias)$", key)
        if match:
            norms[f"body.hidden_states_norms.stage{int(match.group(1)) + 1}.{match.group(2)}"] = value
        elif key.startswith("body."):
            body[key[len("body."):]] = value
        else:
            raise CheckpointError(f"official ConvNeXt backbone: unexpected key {key!r}; not a ConvNeXt backbone")
    return {**_convert_timm(body, "official ConvNeXt backbone"), **norms}


def convert_pretrained(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official recipe's ImageNet-22k ConvNeXt-L file (Facebook's ``convnext_large_22k_224.pth``:
    ``{'model': {downsample_layers.*, stages.i.j.*, norm.*, head.*}}``; a timm-layout file also
    works) -> ``body.*`` tensors, as the official ``convnext_large(pretrained)`` loads it
    (``checkpoint_filter_fn``, ``strict=False``): the classifier ``head.*`` and final ``norm.*`` are
    not used, and the output norms keep their init (weight 1, bias 0)."""
    if isinstance(state.get("model"), dict):
        state = state["model"]
    fb = any(k.startswith("downsample_layers.") for k in state)
    kept = {}
    for key, value in state.items():
        if key.startswith(("head.", "norm.", "norm_pre.")):
            continue
        if fb:
            renamed = _rename(key, _FB_RULES)
            if renamed is None:
                raise CheckpointError(f"ImageNet ConvNeXt file: unexpected key {key!r}; expected Facebook's "
                                      "convnext_large_22k_224.pth layout")
            key = renamed
        kept[key] = value
    if not any(k.startswith("stages.") for k in kept):
        raise CheckpointError("not an ImageNet ConvNeXt file: no stages.* keys (expected Facebook's "
                              "convnext_large_22k_224.pth layout)")
    return _convert_timm(kept, "ImageNet ConvNeXt file")
