"""Video Swin Transformer (Liu et al., CVPR 2022) as MUTR's Video-Swin-T/S/B backbone.

Written here because no mutr dependency has it. torchvision's ``SwinTransformer3d`` built with
patch (1, 4, 4) and window (8, 7, 7) computes the same stage outputs (bitwise, checked against the
official module), but torchvision is not a dependency and would become one for this module alone;
this one also attends through ``scaled_dot_product_attention`` and builds each stage's shift mask
once instead of in every block. What MUTR's
variant does differently from the Kinetics model: patches are 1x4x4 (no temporal downsampling, so
every frame keeps its own features), the four stage outputs are taken before each patch merging,
and there are no output norms. ``temporal = True``: the frames of a clip attend to each other, so
a frame's features depend on the whole clip it is run with (see :mod:`mutr.predictor`).

Shapes: B clips of T frames; inside a stage x is [B, T, H, W, C] (channels last). Attention runs
in windows of (8, 7, 7) (time, height, width), each dimension clipped to the feature size; a
clipped dimension is not shifted. Odd blocks shift the windows by half a window, with a mask
(-100 between tokens from different regions) where a window wraps around. The relative position
bias reads the first N x N entries of the full window's index (N = tokens per clipped window),
as the released weights were trained with: that is the exact index when only time is clipped, and
a different (learned-with) one when a stage is smaller than 7 in height or width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mutr.config import BackboneConfig
from mutr.errors import CheckpointError

WINDOW = (8, 7, 7)
PATCH = 4
_MASK_BYTES = 1 << 26  # attention masks are materialised per chunk of windows of at most this size


def clip_window(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> tuple[tuple, tuple]:
    """A window dimension larger than the feature is clipped to it, and then not shifted."""
    win = tuple(min(s, w) for s, w in zip(size, window))
    return win, tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))


def relative_position_index(window: tuple[int, int, int]) -> Tensor:
    """[N, N] row of the bias table for each (query, key) token pair of a window, N = d*h*w."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # [3, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 3]
    rel = rel + torch.tensor([w - 1 for w in window])
    d, h, w = (2 * x - 1 for x in window)
    return rel[..., 0] * h * w + rel[..., 1] * w + rel[..., 2]


def partition(x: Tensor, window: tuple[int, int, int]) -> Tensor:
    """[B, D, H, W, C] (multiples of the window) -> [B * nW, N, C], windows in (d, h, w) order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, math.prod(window), c)


def merge(windows: Tensor, window: tuple[int, int, int], b: int, d: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`partition`: [B * nW, N, C] -> [B, D, H, W, C]."""
    x = windows.view(b, d // window[0], h // window[1], w // window[2], *window, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def shift_mask(padded: tuple[int, int, int], window: tuple, shift: tuple, device: torch.device) -> Tensor:
    """[nW, N, N]: 0 within a region, -100 across regions of a cyclically shifted window. Regions:
    along each shifted dimension, [0, -window), [-window, -shift) and [-shift, end)."""
    labels = torch.zeros(padded, device=device)
    cuts = [(0, p - w, p - s, p) if s else (0, p) for p, w, s in zip(padded, window, shift)]
    count = 0
    for d0, d1 in zip(cuts[0], cuts[0][1:]):
        for h0, h1 in zip(cuts[1], cuts[1][1:]):
            for w0, w1 in zip(cuts[2], cuts[2][1:]):
                labels[d0:d1, h0:h1, w0:w1] = count
                count += 1
    win = partition(labels[None, ..., None], window)[..., 0]  # [nW, N]
    return (win[:, None, :] != win[:, :, None]).float() * -100.0


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole clips with probability ``drop_prob``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        table = (2 * WINDOW[0] - 1) * (2 * WINDOW[1] - 1) * (2 * WINDOW[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(WINDOW), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B * nW, N, C]; mask [nW, N, N] (shifted windows) or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [B*nW, h, N, c/h]
        index = self.relative_position_index[:n, :n].reshape(-1)  # the released weights' index, see module doc
        bias = self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1).to(q.dtype)  # [h, N, N]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        else:
            nw = mask.shape[0]
            step = max(1, _MASK_BYTES // (self.heads * n * n * q.element_size()))
            q, k, v = (t.view(bw // nw, nw, *t.shape[1:]) for t in (q, k, v))  # [B, nW, h, N, c/h]
            out = torch.empty_like(q)
            for s in range(0, nw, step):
                part = slice(s, s + step)
                m = (bias + mask[part, None].to(q.dtype)).expand(q.shape[0], -1, -1, -1, -1)  # [B, w, h, N, N]
                out[:, part] = F.scaled_dot_product_attention(
                    q[:, part].flatten(0, 1), k[:, part].flatten(0, 1), v[:, part].flatten(0, 1),
                    attn_mask=m.flatten(0, 1)).view_as(out[:, part])
            out = out.flatten(0, 1)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm (shifted) window attention and MLP, each a residual branch with stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, window: tuple, shift: tuple, mask: Tensor | None) -> Tensor:
        """x [B, D, H, W, C]; ``window``/``shift`` already clipped to the stage's size."""
        b, d, h, w, _ = x.shape
        y = self.norm1(x)
        pads = [(-s) % n for s, n in zip((d, h, w), window)]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))  # zeros after the norm, as trained
        dp, hp, wp = y.shape[1:4]
        if any(shift):
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        y = merge(self.attn(partition(y, window), mask if any(shift) else None), window, b, dp, hp, wp)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        x = x + self.drop_path(y[:, :d, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """``depth`` blocks at one resolution, the odd ones with shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop_paths: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, p) for p in drop_paths[:depth])

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[1:4])
        window, shift = clip_window(size, WINDOW, tuple(w // 2 for w in WINDOW))
        mask = None
        if any(shift):
            padded = tuple(math.ceil(s / w) * w for s, w in zip(size, window))
            mask = shift_mask(padded, window, shift, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, window, shift if i % 2 else (0, 0, 0), mask)
        return x


class PatchMerging(nn.Module):
    """2x2 spatial neighbours concatenated (zero-padded to even size), normed, projected to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, D, H, W, C] -> [B, D, ceil(H/2), ceil(W/2), 2C]."""
        x = F.pad(x, (0, 0, 0, x.shape[3] % 2, 0, x.shape[2] % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Each frame's 4x4 patches -> C channels, LayerNorm. The Conv3d kernel is 1x4x4 (the
    released layout); with one frame deep it is a per-frame 2-D convolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(1, PATCH, PATCH), stride=(1, PATCH, PATCH))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor, frames: int) -> Tensor:
        """[B*T, 3, H, W] -> [B, T, ceil(H/4), ceil(W/4), C] (right/bottom zero padding)."""
        h, w = images.shape[-2:]
        x = F.pad(images, (0, (-w) % PATCH, 0, (-h) % PATCH))
        x = F.conv2d(x, self.proj.weight[:, :, 0], self.proj.bias, stride=PATCH)  # [B*T, C, h, w]
        x = x.permute(0, 2, 3, 1)
        return self.norm(x.reshape(-1, frames, *x.shape[1:]))


class VideoSwin(nn.Module):
    """Frames [B*T, 3, H, W] of B clips -> four maps [B*T, C * 2^i, H / 2^(i+2), W / 2^(i+2)]."""

    temporal = True

    def __init__(self, embed_dim: int, depths: list[int], num_heads: list[int], mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        # stochastic depth grows linearly with the block's depth (cpu: also under a meta device)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList(Stage(c, d, h, mlp_ratio, rates[s:])
                                    for c, d, h, s in zip(self.channels, depths, num_heads, starts))
        self.downsamples = nn.ModuleList(PatchMerging(c) for c in self.channels[:-1])

    def forward(self, images: Tensor, frames: int = 1) -> list[Tensor]:
        x = self.patch_embed(images, frames)  # [B, T, h, w, C]
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outs.append(x.permute(0, 1, 4, 2, 3).flatten(0, 1).contiguous())  # [B*T, C, h, w]
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs


def build(config: BackboneConfig) -> VideoSwin:
    p = config.params
    return VideoSwin(p["embed_dim"], list(p["depths"]), list(p["num_heads"]), p.get("mlp_ratio", 4.0),
                     p.get("drop_path_rate", 0.2))


def _is_video_swin(state: dict[str, Tensor], prefix: str) -> bool:
    weight = state.get(prefix + "patch_embed.proj.weight")
    return weight is not None and weight.ndim == 5


def _check_index(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the derived ``relative_position_index`` buffers after checking them."""
    expected = relative_position_index(WINDOW)
    out = {}
    for key, value in state.items():
        if key.endswith("relative_position_index"):
            if not torch.equal(value.cpu().long(), expected):
                raise CheckpointError(f"{key} is not the (8, 7, 7) window's index; this is not a released "
                                      "Video-Swin checkpoint (use the preset that fits)")
            continue
        out[key] = value
    return out


def convert_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``body.*`` (prefix ``backbone.0.`` removed) -> mutr: the same names (this module
    keeps them), minus the derived index buffers."""
    if not _is_video_swin(state, "body.") or any(not k.startswith("body.") for k in state):
        raise CheckpointError("the backbone keys are not Video-Swin's (body.patch_embed.proj.weight [C, 3, 1, 4, 4])")
    return _check_index(state)


def convert_pretrained(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official recipe's Kinetics-400 Video-Swin file (mmaction layout: ``{'state_dict':
    {'backbone.*', 'cls_head.*'}}``, unwrapped by the loader or not) -> ``body.*``.

    As the official code loads it: the classification head and the final ``norm`` are not part
    of MUTR's backbone and are dropped; the patch embedding's 2-frame kernel [C, 3, 2, 4, 4] is
    summed over time into MUTR's 1-frame kernel; the patch mergings move from ``layers.i.downsample``
    to ``downsamples.i``."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not _is_video_swin(state, "backbone."):
        raise CheckpointError("not a Video-Swin Kinetics file: no backbone.patch_embed.proj.weight [C, 3, D, 4, 4]; "
                              "download swin_{tiny,small,base}_patch244_window877_kinetics*.pth")
    out = {}
    for key, value in _check_index({k[len("backbone."):]: v for k, v in state.items()
                                    if k.startswith("backbone.")}).items():
        parts = key.split(".")
        if parts[0] == "norm":
            continue
        if key == "patch_embed.proj.weight":
            value = value.sum(dim=2, keepdim=True)
        if parts[0] == "layers" and parts[2] == "downsample":
            key = ".".join(["downsamples", parts[1], *parts[3:]])
        out["body." + key] = value
    return out
