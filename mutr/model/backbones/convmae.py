"""ConvMAE-B (Gao et al., "ConvMAE: Masked Convolution Meets Masked Autoencoders") as MUTR's
official ``convmae_base`` backbone uses it: a hybrid of two convolution stages and a plain ViT
with ViTDet's windowed / global attention and decomposed relative positions.

  images [N, 3, H, W]
  -> patch_embed1 (4x4 conv, LayerNorm, GELU) -> 2 ConvBlocks            [N, 256, H/4, W/4]   (level 0)
  -> patch_embed2 (2x2 conv, LayerNorm, GELU) -> 2 ConvBlocks            [N, 384, H/8, W/8]   (level 1)
  -> patch_embed3 (2x2 conv, ...) -> Linear patch_embed4 + pos_embed     [N, H/16, W/16, 768]
  -> 11 ViT blocks (window 14, global at 1, 4, 7, 10)
  -> norm3                                                               [N, 768, H/16, W/16] (level 2)
  -> norm4, 2x2 max-pool                                                 [N, 768, H/32, W/32] (level 3)

No maintained library has the convolution stages, so they are written here (official key names);
the ViT blocks are transformers' ``VitDetLayer``, which computes the official block's function
(same windowing with zero padding to multiples of 14, same decomposed relative positions, resized
linearly when their length differs, same arithmetic order). The global blocks' ``rel_pos_h/w``
have 2 * max_size / 16 - 1 rows, fixed by the official ``--max_size`` (640 -> 79 rows; the window
blocks have 27). Frames are independent (``temporal = False``); the padding mask is not used by
the backbone, as in the official model.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import VitDetConfig
from transformers.models.vitdet.modeling_vitdet import VitDetDropPath, VitDetLayer

from mutr.config import BackboneConfig
from mutr.errors import CheckpointError, ConfigError

# ConvMAE-B with the released MUTR flags (official defaults: --max_size 640, drop path 0.2).
DEFAULTS = dict(embed_dims=(256, 384, 768), depths=(2, 2, 11), num_heads=12, window_size=14,
                window_blocks=(0, 2, 3, 5, 6, 8, 9), max_size=640, pretrain_size=224, drop_path_rate=0.2)
_PATCHES = (4, 2, 2)
_EPS = 1e-6  # every LayerNorm but the patch embeddings' (PyTorch's default 1e-5)


class PatchEmbed(nn.Module):
    """Non-overlapping k x k convolution, LayerNorm over channels, GELU: [N, C, H, W] -> [N, D, H/k, W/k]."""

    def __init__(self, in_dim: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class ConvMlp(nn.Module):
    """Two 1x1 convolutions with GELU between (the ViT MLP on a [N, C, H, W] map)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """ConvMAE's ``CBlock``: a ViT block whose token mixer is 1x1 conv -> depthwise 5x5 conv -> 1x1
    conv instead of attention. [N, C, H, W] -> same; LayerNorms over channels (eps 1e-6)."""

    def __init__(self, dim: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = ConvMlp(dim, 4 * dim)
        self.drop_path = VitDetDropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # the norms run on a channels-last view and hand the convolutions that (non-contiguous)
        # layout, as the official block does: the convolutions then round as the official ones
        h = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(h))))
        h = self.norm2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.drop_path(self.mlp(h))


class ConvMAE(nn.Module):
    """The ConvMAE-B body: images [N, 3, H, W] -> four maps at strides 4, 8, 16, 32 (see module doc)."""

    temporal = False

    def __init__(self, embed_dims: tuple[int, int, int], depths: tuple[int, int, int], num_heads: int,
                 window_size: int, window_blocks: tuple[int, ...], max_size: int, pretrain_size: int,
                 drop_path_rate: float) -> None:
        super().__init__()
        d1, d2, d3 = embed_dims
        self.channels = (d1, d2, d3, d3)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth, all 15 blocks
        self.patch_embed1 = PatchEmbed(3, d1, _PATCHES[0])
        self.patch_embed2 = PatchEmbed(d1, d2, _PATCHES[1])
        self.patch_embed3 = PatchEmbed(d2, d3, _PATCHES[2])
        self.patch_embed4 = nn.Linear(d3, d3)
        # absolute positions of the 224x224 pretraining grid (14 x 14, no class token)
        self.pos_embed = nn.Parameter(torch.zeros(1, (pretrain_size // 16) ** 2, d3))
        self.blocks1 = nn.ModuleList(ConvBlock(d1, rates[i]) for i in range(depths[0]))
        self.blocks2 = nn.ModuleList(ConvBlock(d2, rates[depths[0] + i]) for i in range(depths[1]))
        # global blocks size their relative positions for a max_size x max_size frame
        vit = VitDetConfig(hidden_size=d3, num_attention_heads=num_heads, mlp_ratio=4, qkv_bias=True,
                           layer_norm_eps=_EPS, hidden_act="gelu", use_relative_position_embeddings=True,
                           image_size=max_size, patch_size=16, dropout_prob=0.0)
        self.blocks3 = nn.ModuleList(
            VitDetLayer(vit, drop_path_rate=rates[depths[0] + depths[1] + i],
                        window_size=window_size if i in window_blocks else 0)
            for i in range(depths[2]))
        self.norm3 = nn.LayerNorm(d3, eps=_EPS)
        self.norm4 = nn.LayerNorm(d3, eps=_EPS)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official init: Linear trunc_normal(0.02) / bias 0, LayerNorm 1 / 0, pos_embed
        trunc_normal(0.02), relative positions 0, convolutions PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks3:
            block.attention.rel_pos_h.zero_()
            block.attention.rel_pos_w.zero_()

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """pos_embed [1, S*S, C] -> [1, h, w, C], bicubic-resized when the grid is not S x S."""
        size = int(self.pos_embed.shape[1] ** 0.5)
        grid = self.pos_embed.reshape(1, size, size, -1)
        if (h, w) == (size, size):
            return grid
        return F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)

    def forward(self, images: Tensor, frames: int = 1) -> list[Tensor]:
        """images [N, 3, H, W] -> [N, 256, H/4, W/4], [N, 384, H/8, W/8], [N, 768, H/16, W/16],
        [N, 768, H/32, W/32] (``frames`` is unused: frames are independent)."""
        x = self.patch_embed1(images)
        for block in self.blocks1:
            x = block(x)
        feats = [x]
        x = self.patch_embed2(x)
        for block in self.blocks2:
            x = block(x)
        feats.append(x)
        x = self.patch_embed4(self.patch_embed3(x).permute(0, 2, 3, 1))  # [N, h, w, C]
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        x = x.permute(0, 3, 1, 2)  # VitDetLayer maps [N, C, h, w] -> same (channels-last inside)
        for block in self.blocks3:
            x = block(x)[0]
        x = x.permute(0, 2, 3, 1)
        feats.append(self.norm3(x).permute(0, 3, 1, 2))
        feats.append(F.max_pool2d(self.norm4(x).permute(0, 3, 1, 2), 2))
        return feats


def _params(config: BackboneConfig) -> dict:
    unknown = sorted(set(config.params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown ConvMAE backbone parameter(s) {unknown}; use {sorted(DEFAULTS)}")
    return {**DEFAULTS, **config.params}


def build(config: BackboneConfig) -> ConvMAE:
    return ConvMAE(**_params(config))


def _expected(config: BackboneConfig | None = None) -> dict[str, torch.Size]:
    with torch.device("meta"):
        body = build(config or BackboneConfig("convmae"))
    return {k: v.shape for k, v in body.state_dict().items()}


def _rename(key: str) -> str:
    """Official ``blocks3.i.attn.*`` -> VitDetLayer's ``blocks3.i.attention.*``; other names are kept."""
    return re.sub(r"^blocks3\.(\d+)\.attn\.", r"blocks3.\1.attention.", key)


def convert_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``body.*`` (``backbone.0.`` removed) -> this module's ``body.*``; every key used.

    The global blocks' relative positions must have the rows of the released ``--max_size 640``
    (79): another length means the checkpoint was trained with another ``--max_size``."""
    expected = _expected()
    out = {}
    for key, value in state.items():
        if not key.startswith("body."):
            raise CheckpointError(f"unexpected backbone key backbone.0.{key}; not a ConvMAE-B checkpoint")
        out["body." + _rename(key[len("body."):])] = value
    names = {"body." + k: shape for k, shape in expected.items()}
    missing = sorted(set(names) - set(out))
    unexpected = sorted(set(out) - set(names))
    if missing or unexpected:
        raise CheckpointError(f"not a ConvMAE-B backbone: missing {missing[:3]}, unexpected {unexpected[:3]} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for key, shape in names.items():
        got = tuple(out[key].shape)
        if got == tuple(shape):
            continue
        if key.endswith(("rel_pos_h", "rel_pos_w")) and len(got) == 2 and got[1] == shape[1]:
            raise CheckpointError(f"{key} has {got[0]} rows, expected {shape[0]}: the checkpoint was trained with "
                                  f"--max_size {(got[0] + 1) * 8} instead of the released 640, which preset "
                                  "convmae-b fixes; set backbone.params.max_size to that value")
        raise CheckpointError(f"{key} has shape {list(got)}, expected {list(shape)}; not a ConvMAE-B checkpoint")
    return out


def convert_pretrained(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ConvMAE's ImageNet pretraining file (``{"model": ...}`` or its bare state_dict: encoder keys
    ``patch_embed1.*``, ``blocks1.*``, ``blocks3.i.attn.qkv.*``, ``pos_embed`` [1, 196, 768], plus
    the MAE decoder) -> ``body.*`` tensors.

    As the official ``ConvViT.init_weights`` (a non-strict load): the tensors whose name the body
    has are taken and must fit its shape; the rest (decoder, ``norm``, ``mask_token``) is ignored;
    what the file lacks (``rel_pos_h/w``, ``norm3``, ``norm4``) keeps the init (zeros, 1 / 0)."""
    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = _expected()
    out = {}
    for key, value in state.items():
        name = _rename(key)
        if name not in expected:
            continue
        if tuple(value.shape) != tuple(expected[name]):
            raise CheckpointError(f"pretrained {key} has shape {list(value.shape)}, expected "
                                  f"{list(expected[name])}; is this a ConvMAE-Base file?")
        out["body." + name] = value
    if "body.patch_embed1.proj.weight" not in out or "body.blocks3.0.attention.qkv.weight" not in out:
        raise CheckpointError("not a ConvMAE pretrained file (no patch_embed1.proj.weight / blocks3.0.attn.qkv.weight); "
                              "use ConvMAE-Base's ImageNet checkpoint")
    return out
