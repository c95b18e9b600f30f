"""Small components checked against formulas written out here."""

from __future__ import annotations

import math

import torch

from mutr.model.backbone import FrozenBatchNorm2d
from mutr.model.position_encoding import resize_mask, sine_1d, sine_2d


def test_frozen_batch_norm_equals_torchvision_formula() -> None:
    # torchvision.ops.FrozenBatchNorm2d (eps 1e-5): scale = w * (rv + eps).rsqrt(); bias = b - rm * scale
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(6)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).copy_(torch.randn(6))
    bn.running_var.copy_(torch.rand(6) + 0.1)
    x = torch.randn(2, 6, 3, 5)
    scale = bn.weight * (bn.running_var + 1e-5).rsqrt()
    expected = x * scale.view(1, -1, 1, 1) + (bn.bias - bn.running_mean * scale).view(1, -1, 1, 1)
    assert torch.equal(bn(x), expected)
    assert [n for n, _ in bn.named_parameters()] == []  # all four are buffers, as in the official model
    assert sorted(n for n, _ in bn.named_buffers()) == ["bias", "running_mean", "running_var", "weight"]


def test_sine_2d_matches_the_definition() -> None:
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[:, :, 3] = True  # last column is padding
    pos = sine_2d(mask, num_feats=4)
    assert pos.shape == (1, 8, 3, 4)
    # y block first; row i has cumsum i+1; normalised (e - 0.5) / (3 + 1e-6) * 2pi
    y = (2 - 0.5) / (3 + 1e-6) * 2 * math.pi
    dim_t = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    expect_y = [math.sin(y / dim_t[0]), math.cos(y / dim_t[1]), math.sin(y / dim_t[2]), math.cos(y / dim_t[3])]
    torch.testing.assert_close(pos[0, :4, 1, 0], torch.tensor(expect_y))
    # x counts only unpadded columns: column 2 has cumsum 3, last valid cumsum 3
    x = (3 - 0.5) / (3 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 4, 0, 2], torch.tensor(math.sin(x)))


def test_sine_1d_has_no_offset_and_respects_padding() -> None:
    mask = torch.tensor([[False, False, True]])
    pos = sine_1d(mask, 4)
    x = 1 / (2 + 1e-6) * 2 * math.pi  # first token: cumsum 1 over 2 valid tokens
    torch.testing.assert_close(pos[0, 0, 0], torch.tensor(math.sin(x)))
    torch.testing.assert_close(pos[0, 0, 1], torch.tensor(math.cos(x)))


def test_resize_mask_is_legacy_nearest() -> None:
    """108 -> 13 picks rows floor(i * 108 / 13): 0, 8, 16, 24, 33, 41, 49, 58, ... (spec §19.1)."""
    rows = torch.arange(108)[None, :, None].expand(1, 108, 1)
    mask = (rows % 2 == 1)  # odd rows are True
    out = resize_mask(mask, (13, 1))
    picked = [int(i * 108 / 13) for i in range(13)]
    assert picked[:8] == [0, 8, 16, 24, 33, 41, 49, 58]
    assert out[0, :, 0].tolist() == [p % 2 == 1 for p in picked]
