"""Swin (Liu et al. 2021) as in the released Swin-L MUTR checkpoint: transformers' ``SwinBackbone``.

The official backbone (``models/swin_transformer.py``, ``--backbone swin_l_p4w7``) is the
detection variant of Swin: frames are independent, each stage pads its map to a multiple of the
window (7) and odd blocks shift by 3, and a LayerNorm ``norm0..3`` is applied to each output.
transformers' ``SwinBackbone`` computes the same function:

* it calls its stages with ``always_partition=True``, so a stage smaller than the window keeps
  window 7 and shift 3 on a zero-padded map (``SwinLayer.set_shift_and_window_size``, which
  would shrink the window and drop the shift, is skipped) -- the official behaviour, which the
  harness's small frames hit at strides 16 and 32;
* its output norms ``hidden_states_norms.stage1..4`` are ``nn.LayerNorm`` (eps 1e-5) over the
  pre-downsampling map of each stage, as ``norm0..3``;
* the fused ``attn.qkv`` projection is split into ``q_proj``/``k_proj``/``v_proj`` (rows in
  q, k, v order); the relative position index is a derived buffer on both sides.

The only change: ``SwinModel.layernorm`` (a final norm the backbone output never uses) is
replaced by an identity, so the parameter count is the official one.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from transformers import SwinBackbone, SwinConfig

from mutr.config import BackboneConfig
from mutr.errors import CheckpointError

_OUT = ["stage1", "stage2", "stage3", "stage4"]
WINDOW = 7


class SwinBody(SwinBackbone):
    """SwinBackbone returning the four normed maps [B*T, C_l, ceil(H/s), ceil(W/s)], s = 4..32."""

    temporal = False  # frames are independent

    def __init__(self, params: dict) -> None:
        super().__init__(SwinConfig(**params, out_features=_OUT))
        self.swin.layernorm = nn.Identity()  # unused by the backbone output; not in the official model

    def forward(self, images: Tensor, frames: int = 1) -> list[Tensor]:  # type: ignore[override]
        """images [B*T, 3, H, W] -> four maps; ``frames`` is unused (frames are independent)."""
        return list(super().forward(images).feature_maps)


def build(config: BackboneConfig) -> nn.Module:
    return SwinBody(dict(config.params))


# official (relative to backbone.0., or the pretrained file's root) -> transformers' name
_RULES: list[tuple[str, str]] = [
    (r"^patch_embed\.proj\.", "swin.embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "swin.embeddings.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm1\.", r"swin.encoder.layers.\1.blocks.\2.layernorm_before."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm2\.", r"swin.encoder.layers.\1.blocks.\2.layernorm_after."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"swin.encoder.layers.\1.blocks.\2.attention.o_proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
     r"swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.", r"swin.encoder.layers.\1.blocks.\2.mlp."),
    (r"^layers\.(\d+)\.downsample\.", r"swin.encoder.layers.\1.downsample."),
]
_QKV = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_INDEX = re.compile(r"^layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")
_NORM = re.compile(r"^norm(\d)\.(weight|bias)$")


def _window_index(window: int = WINDOW) -> Tensor:
    """Swin's relative position index of a window x window window: [w*w, w*w] rows of the bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, 2]
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _convert(state: dict[str, Tensor], norms: bool, what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    index = _window_index()
    for key, value in state.items():
        if _INDEX.match(key):  # derived from the window size: checked, not loaded
            if value.shape != index.shape or not torch.equal(value.to(index.dtype), index):
                raise CheckpointError(f"{what}: {key} is not the index of a 7x7 window; the file is not Swin-L p4w7")
            continue
        qkv = _QKV.match(key)
        if qkv:
            stage, block, kind = qkv.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"swin.encoder.layers.{stage}.blocks.{block}.attention.{name}.{kind}"] = part.clone()
            continue
        norm = _NORM.match(key)
        if norm and norms:
            out[f"hidden_states_norms.stage{int(norm.group(1)) + 1}.{norm.group(2)}"] = value
            continue
        for pattern, repl in _RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key, count=1)] = value
                break
        else:
            raise CheckpointError(f"{what}: unexpected key {key!r}; not a Swin (swin_*_p4w7) backbone")
    return {"body." + k: v for k, v in out.items()}


def convert_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``backbone.0.*`` (prefix removed: ``body.layers.0.blocks.0.attn.qkv.weight``,
    ``body.norm0.weight``, ...) -> ``body.*`` of `SwinBody`. Every key is used; the relative
    position index (real checkpoints hold it, keyed fixtures do not) is checked and dropped."""
    if not state or not all(k.startswith("body.") for k in state):
        sample = sorted(k for k in state if not k.startswith("body."))[:2]
        raise CheckpointError(f"the backbone keys are not the official Swin's (body.*); found {sample or 'none'}")
    return _convert({k[len("body."):]: v for k, v in state.items()}, norms=True, what="official Swin backbone")


def convert_pretrained(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official recipe's ImageNet-22k Swin file (Microsoft's ``swin_large_patch4_window7_224_22k.pth``:
    ``{'model': {patch_embed.*, layers.*, norm.*, head.*}}``) -> ``body.*`` tensors, as the official
    ``SwinTransformer.init_weights`` loads it (``strict=False``): the classifier ``head.*``, the final
    ``norm.*`` and the shifted blocks' ``attn_mask`` buffers are not used, and the output norms
    ``norm0..3`` keep their init (weight 1, bias 0)."""
    if isinstance(state.get("model"), dict):
        state = state["model"]
    kept = {k: v for k, v in state.items()
            if not (k.startswith(("head.", "norm.")) or k.endswith(".attn_mask"))}
    if not any(k.startswith("layers.") for k in kept):
        raise CheckpointError("not an ImageNet Swin file: no layers.* keys (expected Microsoft's "
                              "swin_large_patch4_window7_224_22k.pth layout)")
    return _convert(kept, norms=False, what="ImageNet Swin file")
