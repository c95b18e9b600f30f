"""The inference preprocessing must equal torchvision's T.Resize(432) + ToTensor + Normalize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mutr.errors import InputError
from mutr.io.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess,
    resize_short_side,
    resized_size,
    to_model_input,
)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "max_size", "expected"),
    [
        ((854, 480), None, (768, 432)),  # the documented example
        ((480, 854), None, (432, 768)),  # portrait: the rule follows the short side
        ((640, 361), None, (765, 432)),  # 765.87 is truncated, not rounded
        ((1000, 333), None, (1297, 432)),
        ((500, 500), None, (432, 432)),
        ((1920, 480), 1000, (1000, 250)),  # max_size: long -> 1000, short -> int(1000*432/1728)
    ],
    ids=["854x480", "portrait", "truncate", "wide", "square", "max_size"],
)
def test_resized_size_follows_torchvision(size, max_size, expected):
    assert resized_size(*size, 432, max_size=max_size) == expected


def test_max_size_not_above_size_is_refused():
    with pytest.raises(InputError, match="max_size"):
        resized_size(854, 480, 432, max_size=432)


def test_resize_equals_pil_bilinear_reference():
    array = _noise(480, 854)
    reference = np.asarray(Image.fromarray(array).resize((768, 432), Image.Resampling.BILINEAR))
    out_np = resize_short_side(array)
    out_pil = resize_short_side(Image.fromarray(array))
    assert isinstance(out_np, np.ndarray) and isinstance(out_pil, Image.Image)
    assert out_np.shape == (432, 768, 3) and out_pil.size == (768, 432)
    np.testing.assert_array_equal(out_np, reference)
    np.testing.assert_array_equal(np.asarray(out_pil), reference)


def test_image_already_at_size_is_returned_unchanged():
    image = Image.fromarray(_noise(432, 600))
    assert resize_short_side(image) is image


def test_to_model_input_values_and_layout():
    frames = [_noise(6, 10, seed=s) for s in range(3)]
    frames[0][0, 0] = (255, 0, 128)
    x = to_model_input(frames)
    assert x.shape == (3, 3, 6, 10) and x.dtype == torch.float32
    expected = (255 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert x[0, 0, 0, 0].item() == pytest.approx(expected[0], abs=1e-6)
    assert x[0, 1, 0, 0].item() == pytest.approx(expected[1], abs=1e-6)
    manual = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    manual = (manual - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, manual, rtol=0, atol=1e-6)


def test_to_model_input_rejects_mixed_sizes_and_bad_arrays():
    with pytest.raises(InputError, match="different sizes"):
        to_model_input([_noise(4, 4), _noise(4, 5)])
    with pytest.raises(InputError, match="uint8"):
        to_model_input([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(InputError, match="no frames"):
        to_model_input([])


def test_preprocess_matches_torchvision_when_available():
    """Bit-exact against the real thing wherever torchvision is installed (skipped otherwise)."""
    T = pytest.importorskip("torchvision.transforms")
    frames = [_noise(97, 161, seed=s) for s in range(2)]
    official = T.Compose([T.Resize(432), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([official(Image.fromarray(f)) for f in frames])
    torch.testing.assert_close(preprocess(frames), expected, rtol=0, atol=0)
