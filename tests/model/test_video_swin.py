"""Video-Swin-T/S/B (mutr.model.backbones.video_swin): sizes, official and Kinetics key layouts.

Its outputs are checked against the official model in tests/test_official_equivalence.py
(fixture tests/fixtures/official/video_swin_t_p4w7/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mutr import MUTR, MUTRConfig
from mutr.convert import convert_state_dict, official_backbone_preset
from mutr.errors import CheckpointError
from mutr.model.backbone import Backbone
from mutr.model.backbones import video_swin

STATE_DICTS = Path(__file__).parents[1] / "fixtures" / "official_state_dicts"
# (unique, trainable, backbone) parameters of the official model, from the harness README's table
OFFICIAL = {
    "video-swin-t": ("video_swin_t_p4w7", 187_088_997, 62_443_365, 27_844_326),
    "video-swin-s": ("video_swin_s_p4w7", 208_747_605, 84_101_973, 49_502_934),
    "video-swin-b": ("video_swin_b_p4w7", 247_588_167, 122_942_535, 87_630_792),
}


def _official_shapes(backbone: str) -> dict[str, list[int]]:
    return json.loads((STATE_DICTS / f"{backbone}.json").read_text())["keys"]


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_parameter_counts_equal_the_official_model(preset):
    with torch.device("meta"):
        model = MUTR(MUTRConfig.preset(preset))
    params = {id(p): p for p in model.parameters()}.values()
    counts = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
              sum(p.numel() for p in model.backbone.parameters()))
    assert counts == OFFICIAL[preset][1:]
    assert model.backbone.temporal


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_official_keys_convert_to_every_backbone_tensor(preset):
    shapes = _official_shapes(OFFICIAL[preset][0])
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    for k in official:
        if k.endswith("relative_position_index"):  # the derived buffer, as real checkpoints hold it
            official[k] = video_swin.relative_position_index(video_swin.WINDOW)
    assert official_backbone_preset(official) == preset
    body = {k[len("backbone.0."):]: v for k, v in official.items() if k.startswith("backbone.0.")}
    converted = video_swin.convert_official(body)
    with torch.device("meta"):
        expected = MUTR(MUTRConfig.preset(preset)).backbone.state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_a_wrong_relative_position_index_or_another_backbone_is_refused():
    index = video_swin.relative_position_index(video_swin.WINDOW)
    good = {"body.patch_embed.proj.weight": torch.zeros(8, 3, 1, 4, 4),
            "body.layers.0.blocks.0.attn.relative_position_index": index}
    assert list(video_swin.convert_official(good)) == ["body.patch_embed.proj.weight"]
    with pytest.raises(CheckpointError, match="relative_position_index"):
        video_swin.convert_official({**good, "body.layers.0.blocks.0.attn.relative_position_index": index.flip(0)})
    with pytest.raises(CheckpointError, match="Video-Swin"):
        video_swin.convert_official({"body.patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)})


def test_a_video_swin_checkpoint_with_another_preset_names_the_fitting_one():
    shapes = _official_shapes("video_swin_t_p4w7")
    official = {k: torch.zeros(s) for k, s in shapes.items() if k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match="video-swin-t"):
        convert_state_dict(official, "video-swin-b")


def _kinetics_file(preset: str, seed: int = 0) -> dict:
    """A random file in the layout of the official recipe's Kinetics-400 weights
    (swin_*_patch244_window877_kinetics*.pth, mmaction): {'meta', 'state_dict': backbone.* with
    each stage's patch merging as layers.i.downsample, a 2x4x4 patch kernel, the final norm and
    the classification head}."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _official_shapes(OFFICIAL[preset][0]).items():
        if not key.startswith("backbone.0.body."):
            continue
        key = key[len("backbone.0.body."):]
        if key.startswith("downsamples."):
            _, i, rest = key.split(".", 2)
            key = f"layers.{i}.downsample.{rest}"
        if key.endswith("relative_position_index"):
            state["backbone." + key] = video_swin.relative_position_index(video_swin.WINDOW)
            continue
        if key == "patch_embed.proj.weight":
            shape = [shape[0], 3, 2, 4, 4]
        state["backbone." + key] = torch.randn(shape, generator=g)
    width = state["backbone.layers.3.blocks.0.norm1.weight"].shape[0]
    state["backbone.norm.weight"], state["backbone.norm.bias"] = torch.randn(width), torch.randn(width)
    state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"] = torch.randn(400, width), torch.randn(400)
    return {"meta": {}, "state_dict": state}


def test_kinetics_weights_load_into_the_backbone_as_the_official_code_loads_them():
    file = _kinetics_file("video-swin-t")
    converted = video_swin.convert_pretrained(file)
    backbone = Backbone(MUTRConfig.preset("video-swin-t").backbone)
    assert backbone.load_state_dict(converted, strict=True)  # every backbone tensor, nothing else
    src = file["state_dict"]
    # the 2-frame patch kernel summed over time; stage merging moved to downsamples; head/norm dropped
    assert torch.equal(backbone.body.patch_embed.proj.weight, src["backbone.patch_embed.proj.weight"].sum(2, True))
    assert torch.equal(backbone.body.downsamples[1].reduction.weight, src["backbone.layers.1.downsample.reduction.weight"])
    assert torch.equal(backbone.body.layers[2].blocks[5].attn.relative_position_bias_table,
                       src["backbone.layers.2.blocks.5.attn.relative_position_bias_table"])
    assert video_swin.convert_pretrained(file["state_dict"]).keys() == converted.keys()  # unwrapped by a loader
    with pytest.raises(CheckpointError, match="Kinetics"):
        video_swin.convert_pretrained({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}})


def test_shifted_windows_mask_only_tokens_from_different_regions():
    # padded 2 x 14 x 14 features, window (2, 7, 7) shifted by (0, 3, 3): the last window row and
    # column mix three regions per axis; the first window is one region
    mask = video_swin.shift_mask((2, 14, 14), (2, 7, 7), (0, 3, 3), torch.device("cpu"))
    assert mask.shape == (4, 98, 98)
    assert mask[0].eq(0).all() and set(mask.unique().tolist()) == {0.0, -100.0}
    labels = torch.zeros(7, 7)
    labels[4:, :] += 1  # rows from the wrapped-around region of window (1, 0)
    labels = labels.flatten().repeat(2)
    assert torch.equal(mask[2] == 0, labels[:, None] == labels[None, :])


def test_frames_mix_within_a_clip_and_never_across_clips():
    torch.manual_seed(0)
    body = video_swin.VideoSwin(8, [2, 2, 2, 2], [1, 1, 2, 2]).eval()
    a, b = torch.randn(3, 3, 64, 96), torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        both = body(torch.cat([a, b]), frames=3)
        alone = body(a, frames=3)
        changed = body(torch.cat([a[:2], b[:1]]), frames=3)
    assert [tuple(x.shape) for x in both] == [(6, 8, 16, 24), (6, 16, 8, 12), (6, 32, 4, 6), (6, 64, 2, 3)]
    for x, y in zip(both, alone):
        torch.testing.assert_close(x[:3], y)  # clip b does not reach clip a
    assert (changed[0][0] - alone[0][0]).abs().max() > 1e-3  # frame 2 of the clip reaches frame 0


def test_every_parameter_receives_a_gradient_through_shifted_windows():
    torch.manual_seed(0)
    body = video_swin.VideoSwin(8, [2, 2, 2, 2], [1, 1, 2, 2]).train()  # 16x24 at stride 4: shifted, masked
    sum(f.square().mean() for f in body(torch.randn(2, 3, 64, 96), frames=2)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
