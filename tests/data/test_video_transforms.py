"""Training transforms keep frames, masks, boxes and captions consistent; collate pads to /32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mutr.data import ClipSample, SyntheticDataset, collate, train_transforms
from mutr.data.common import make_target, mask_to_box
from mutr.data.synthetic import make_clip
from mutr.data.video_transforms import (Check, Compose, PhotometricDistort, RandomHorizontalFlip, RandomResize,
                                        RandomSizeCrop, ToTensorNormalize, crop, flip_caption, hflip, resize)
from mutr.errors import InputError


def _scene(caption: str = "the red circle on the left", t: int = 3, size=(40, 64)):
    clip = make_clip([5], num_frames=t, size=size, num_objects=2)
    images = [Image.fromarray(f) for f in clip.frames]
    return clip, images, make_target(clip.mask(1), [True] * t, range(t), caption)


def _boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack([mask_to_box(m) for m in masks.numpy()]))


def test_flip_swaps_left_and_right_and_mirrors_boxes_and_masks():
    clip, images, target = _scene()
    w = images[0].width
    flipped, out = hflip(images, target)
    assert out["caption"] == "the red circle on the right"
    assert flip_caption("left of the right one") == "right of the left one"
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    assert np.array_equal(np.asarray(flipped[1]), clip.frames[1][:, ::-1])
    b = target["boxes"]
    assert torch.equal(out["boxes"], torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1))
    # the official rule maps x -> W - x (no -1): mask-derived boxes sit one pixel to the left
    assert torch.equal(_boxes_from_masks(out["masks"]) + torch.tensor([1.0, 0, 1, 0]), out["boxes"])
    # the referred object really moved to the other side: the caption stays true
    assert out["masks"][0].nonzero()[:, 1].float().mean() > w / 2 > target["masks"][0].nonzero()[:, 1].float().mean()


def test_random_flip_is_seeded():
    _, images, target = _scene()
    flip = RandomHorizontalFlip()
    outcomes = {flip(images, target, np.random.default_rng(s))[1]["caption"] for s in range(20)}
    assert outcomes == {"the red circle on the left", "the red circle on the right"}
    a = flip(images, target, np.random.default_rng(3))[1]["caption"]
    assert all(flip(images, target, np.random.default_rng(3))[1]["caption"] == a for _ in range(3))


@pytest.mark.parametrize("size, max_size", [(100, None), (23, None), (300, 400)])
def test_resize_keeps_boxes_and_masks_in_agreement(size, max_size):
    _, images, target = _scene()
    out_images, out = resize(images, target, size, max_size)
    h, w = out["masks"].shape[1:]
    assert out_images[0].size == (w, h) and out["size"].tolist() == [h, w]
    assert min(h, w) == size or max(h, w) <= max_size
    ratio = max(w / 64, h / 40)
    from_masks = _boxes_from_masks(out["masks"])
    # nearest-resized masks and scaled boxes agree to about one source pixel
    assert (from_masks - out["boxes"]).abs().max() <= ratio + 1


def test_crop_clamps_boxes_and_slices_masks():
    _, images, target = _scene()
    out_images, out = crop(images, target, 5, 10, 20, 30)
    assert out_images[0].size == (30, 20) and out["masks"].shape[1:] == (20, 30)
    assert torch.equal(out["masks"], target["masks"][:, 5:25, 10:40])
    assert (out["boxes"][:, 0::2] <= 30).all() and (out["boxes"][:, 1::2] <= 20).all() and (out["boxes"] >= 0).all()


def test_check_marks_one_pixel_wide_objects_invalid_with_inclusive_boxes():
    masks = np.zeros((3, 10, 12), dtype=bool)
    masks[0, 2:6, 4] = True  # one pixel wide: x2 == x1
    masks[1, 3:5, 4:6] = True  # 2x2: box [4, 3, 5, 4], valid
    target = make_target(masks, [True] * 3, range(3))
    assert target["boxes"][1].tolist() == [4, 3, 5, 4]  # inclusive max indices, no +1
    assert target["valid"].tolist() == [True, True, False]  # before Check: "has a pixel"
    _, out = Check()([], target, np.random.default_rng(0))
    assert out["valid"].tolist() == [False, True, False]
    assert out["boxes"][0].tolist() == [0, 0, 0, 0] and out["boxes"][1].tolist() == [4, 3, 5, 4]


def test_to_tensor_normalizes_and_writes_cxcywh():
    _, images, target = _scene(size=(40, 64))
    frames, out = ToTensorNormalize()(images, dict(target), np.random.default_rng(0))
    assert frames.shape == (3, 3, 40, 64) and frames.dtype == torch.float32
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    torch.testing.assert_close(out["boxes"][0], torch.tensor([(x1 + x2) / 128, (y1 + y2) / 80, (x2 - x1) / 64, (y2 - y1) / 40]))


def test_photometric_distort_is_per_frame_and_seeded():
    _, images, target = _scene()
    same = [Image.fromarray(np.asarray(images[0]))] * 4
    a, _ = PhotometricDistort()(same, target, np.random.default_rng(1))
    b, _ = PhotometricDistort()(same, target, np.random.default_rng(1))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert len({np.asarray(x).tobytes() for x in a}) > 1  # drawn independently per frame


def test_train_recipe_is_deterministic_and_consistent():
    small = train_transforms(scales=(48, 64), max_size=96, crop_scales=(64, 80), crop_range=(40, 60))
    ds = SyntheticDataset("text", num_videos=4, num_frames=3, size=(40, 64), seed=0, transforms=small)
    for key in [(i, s) for i in range(4) for s in range(3)]:
        a, b = ds[key], ds[key]
        assert torch.equal(a.frames, b.frames) and a.caption == b.caption
        assert all(torch.equal(a.target[k], b.target[k]) for k in a.target)
        h, w = a.frames.shape[-2:]
        assert a.target["masks"].shape[1:] == (h, w)
        valid = a.target["valid"]
        assert (a.target["boxes"][~valid] == 0).all()
        assert (a.target["boxes"][valid][:, 2:] > 0).all() and (a.target["boxes"][valid] <= 1).all()
        for t in torch.nonzero(valid).flatten():  # the final boxes still outline the final masks
            x1, y1, x2, y2 = mask_to_box(a.target["masks"][t].numpy())
            cx, cy, bw, bh = (a.target["boxes"][t] * torch.tensor([w, h, w, h])).tolist()
            assert max(abs(cx - (x1 + x2) / 2), abs(cy - (y1 + y2) / 2), abs(bw - (x2 - x1)), abs(bh - (y2 - y1))) <= 4


def test_random_size_crop_and_resize_draw_from_their_ranges():
    _, images, target = _scene(size=(40, 64))
    t = Compose([RandomResize([80]), RandomSizeCrop(50, 70)])
    for s in range(5):
        out_images, out = t(images, target, np.random.default_rng(s))
        w, h = out_images[0].size
        assert 50 <= w <= 70 and 50 <= h <= 70 and out["masks"].shape[1:] == (h, w)


def _sample(h: int, w: int, caption: str | None = "x", t: int = 2) -> ClipSample:
    target = {"masks": torch.ones(t, h, w, dtype=torch.bool), "boxes": torch.zeros(t, 4)}
    audio = None if caption is not None else torch.zeros(5, 1, 96, 64)
    return ClipSample(torch.ones(t, 3, h, w), target, caption=caption, audio=audio)


def test_collate_pads_to_a_multiple_of_32_with_a_mask():
    batch = collate([_sample(40, 70), _sample(33, 96)])
    assert batch.frames.shape == (2, 2, 3, 64, 96) and batch.mask.shape == (2, 2, 64, 96)
    assert not batch.mask[0, :, :40, :70].any() and batch.mask[0, :, 40:].all() and batch.mask[0, :, :, 70:].all()
    assert (batch.frames[0][batch.mask[0][:, None].expand(-1, 3, -1, -1)] == 0).all()
    assert batch.frames[1, :, :, :33, :].eq(1).all() and not batch.mask[1, :, :33].any()
    assert batch.targets[0]["masks"].shape == (2, 64, 96) and batch.targets[0]["masks"].sum() == 2 * 40 * 70
    assert batch.captions == ["x", "x"] and batch.audio is None
    audio = collate([_sample(32, 32, None)])
    assert audio.frames.shape[-2:] == (32, 32) and audio.audio.shape == (1, 5, 1, 96, 64)
    assert audio.audio_mask.shape == (1, 5) and not audio.audio_mask.any()


def test_collate_refuses_mixed_references_and_frame_counts():
    with pytest.raises(InputError, match="group_size"):
        collate([_sample(32, 32), _sample(32, 32, None)])
    with pytest.raises(InputError, match="frame counts"):
        collate([_sample(32, 32, t=2), _sample(32, 32, t=3)])
