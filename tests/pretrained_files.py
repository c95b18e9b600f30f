"""Random files in the layout of the official recipes' backbone pretraining files, at a small size:
Microsoft's Swin ImageNet file (swin_large_patch4_window7_224_22k.pth) and Facebook's ConvNeXt
release (convnext_large_22k_224.pth). Shared by tests/model/test_swin_convnext.py and
tests/train/test_backbone_pretrained.py."""

from __future__ import annotations

import torch

from mutr.model.backbones import swin

SMALL_SWIN = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=7)
SMALL_CONVNEXT = dict(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32])


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def swin_imagenet_file(embed_dim: int, depths: list[int], num_heads: list[int], window: int = 7) -> dict:
    """Microsoft's Swin ImageNet file layout: {'model': {...}} with the classifier, the final norm,
    the relative position indices and the shifted blocks' attention masks."""
    g = torch.Generator().manual_seed(0)
    s = {"patch_embed.proj.weight": _rand(g, embed_dim, 3, 4, 4), "patch_embed.proj.bias": _rand(g, embed_dim),
         "patch_embed.norm.weight": _rand(g, embed_dim), "patch_embed.norm.bias": _rand(g, embed_dim)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = embed_dim * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            s.update({p + "norm1.weight": _rand(g, c), p + "norm1.bias": _rand(g, c),
                      p + "attn.relative_position_bias_table": _rand(g, (2 * window - 1) ** 2, heads),
                      p + "attn.relative_position_index": swin._window_index(window),
                      p + "attn.qkv.weight": _rand(g, 3 * c, c), p + "attn.qkv.bias": _rand(g, 3 * c),
                      p + "attn.proj.weight": _rand(g, c, c), p + "attn.proj.bias": _rand(g, c),
                      p + "norm2.weight": _rand(g, c), p + "norm2.bias": _rand(g, c),
                      p + "mlp.fc1.weight": _rand(g, 4 * c, c), p + "mlp.fc1.bias": _rand(g, 4 * c),
                      p + "mlp.fc2.weight": _rand(g, c, 4 * c), p + "mlp.fc2.bias": _rand(g, c)})
            if j % 2:
                s[p + "attn_mask"] = torch.zeros(4, window * window, window * window)
        if i < len(depths) - 1:
            s.update({f"layers.{i}.downsample.reduction.weight": _rand(g, 2 * c, 4 * c),
                      f"layers.{i}.downsample.norm.weight": _rand(g, 4 * c),
                      f"layers.{i}.downsample.norm.bias": _rand(g, 4 * c)})
    last = embed_dim * 2 ** (len(depths) - 1)
    s.update({"norm.weight": _rand(g, last), "norm.bias": _rand(g, last), "head.weight": _rand(g, 21841, last),
              "head.bias": _rand(g, 21841)})
    return {"model": s}


def convnext_imagenet_file(depths: list[int], dims: list[int]) -> dict:
    """Facebook's ConvNeXt release layout: {'model': {downsample_layers.*, stages.i.j.*, norm.*, head.*}}."""
    g = torch.Generator().manual_seed(1)
    s = {"downsample_layers.0.0.weight": _rand(g, dims[0], 3, 4, 4), "downsample_layers.0.0.bias": _rand(g, dims[0]),
         "downsample_layers.0.1.weight": _rand(g, dims[0]), "downsample_layers.0.1.bias": _rand(g, dims[0])}
    for i, (depth, c) in enumerate(zip(depths, dims)):
        if i:
            s.update({f"downsample_layers.{i}.0.weight": _rand(g, dims[i - 1]),
                      f"downsample_layers.{i}.0.bias": _rand(g, dims[i - 1]),
                      f"downsample_layers.{i}.1.weight": _rand(g, c, dims[i - 1], 2, 2),
                      f"downsample_layers.{i}.1.bias": _rand(g, c)})
        for j in range(depth):
            p = f"stages.{i}.{j}."
            s.update({p + "gamma": _rand(g, c), p + "dwconv.weight": _rand(g, c, 1, 7, 7), p + "dwconv.bias": _rand(g, c),
                      p + "norm.weight": _rand(g, c), p + "norm.bias": _rand(g, c),
                      p + "pwconv1.weight": _rand(g, 4 * c, c), p + "pwconv1.bias": _rand(g, 4 * c),
                      p + "pwconv2.weight": _rand(g, c, 4 * c), p + "pwconv2.bias": _rand(g, c)})
    s.update({"norm.weight": _rand(g, dims[-1]), "norm.bias": _rand(g, dims[-1]),
              "head.weight": _rand(g, 21841, dims[-1]), "head.bias": _rand(g, 21841)})
    return {"model": s}
