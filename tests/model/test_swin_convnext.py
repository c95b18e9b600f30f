"""Swin-L and ConvNeXt-L backbone families: official parameter counts, the key mapping of the
official checkpoints and of the pretraining files, and ``mutr train`` starting from those files.

Equality of the outputs with the official model: tests/test_official_equivalence.py (keyed
fixtures swin_l_p4w7 / convnext_large). The pretraining files here are random tensors in the
layout of the official recipe's files (Microsoft's swin_large_patch4_window7_224_22k.pth,
Facebook's convnext_large_22k_224.pth), at a small size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mutr import MUTR, MUTRConfig
from mutr.config import BackboneConfig
from mutr.errors import CheckpointError
from mutr.model.backbone import Backbone
from mutr.model.backbones import convnext, swin
from pretrained_files import SMALL_CONVNEXT, SMALL_SWIN, convnext_imagenet_file, swin_imagenet_file

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _meta(name: str) -> MUTR:
    with torch.device("meta"):
        return MUTR(MUTRConfig.preset(name))


def _backbone_params(model: MUTR) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))


@pytest.mark.parametrize("preset, total, trainable, backbone", [
    # the harness README's table ("params (unique)", "trainable", "backbone"), from the official model
    ("swin-l", 356_380_947, 231_735_315, 194_998_164),
    ("convnext-l", 357_615_807, 232_970_175, 196_233_024),
])
def test_official_parameter_counts(preset: str, total: int, trainable: int, backbone: int) -> None:
    model = _meta(preset)
    assert model.num_parameters() == total
    assert model.num_parameters(trainable_only=True) == trainable
    assert _backbone_params(model) == backbone
    assert model.backbone.channels == [192, 384, 768, 1536] and not model.backbone.temporal


@pytest.mark.parametrize("preset, official", [("swin-l", "swin_l_p4w7"), ("convnext-l", "convnext_large")])
def test_every_official_backbone_key_has_its_place(preset: str, official: str) -> None:
    shapes = json.loads((FIXTURES / "official_state_dicts" / f"{official}.json").read_text())["keys"]
    prefix = "backbone.0."
    state = {k[len(prefix):]: torch.zeros(v) for k, v in shapes.items() if k.startswith(prefix)
             and not k.endswith("relative_position_index")}
    family = swin if preset == "swin-l" else convnext
    converted = family.convert_official(state)
    expected = _meta(preset).backbone.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_swin_relative_position_index_is_checked_and_dropped() -> None:
    index = swin._window_index()
    good = {"body.layers.0.blocks.0.attn.relative_position_index": index}
    assert swin.convert_official(good) == {}
    with pytest.raises(CheckpointError, match="not the index of a 7x7 window"):
        swin.convert_official({"body.layers.0.blocks.0.attn.relative_position_index": index.flip(0)})


def test_swin_qkv_is_split_in_query_key_value_order() -> None:
    qkv = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(12, 4)
    out = swin.convert_official({"body.layers.1.blocks.3.attn.qkv.weight": qkv})
    base = "body.swin.encoder.layers.1.blocks.3.attention."
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(out[base + name + ".weight"], qkv[4 * i: 4 * (i + 1)])


def test_convnext_output_norms_use_the_official_eps() -> None:
    body = convnext.build(BackboneConfig("convnext", SMALL_CONVNEXT))
    assert [n.eps for n in body.hidden_states_norms.values()] == [1e-5] * 4


def test_families_reject_other_keys() -> None:
    with pytest.raises(CheckpointError, match="not a Swin"):
        swin.convert_official({"body.stages.0.blocks.0.gamma": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="not a ConvNeXt"):
        convnext.convert_official({"body.layers.0.blocks.0.norm1.weight": torch.zeros(3)})


# --------------------------------------------------------------------------- pretraining files


def _timm_names(fb: dict) -> dict:
    """The official loader's renaming (checkpoint_filter_fn), written out independently."""
    out = {}
    for k, v in fb.items():
        if k.startswith(("head.", "norm.")):
            continue
        parts = k.split(".")
        if parts[0] == "downsample_layers":
            k = ("stem." + ".".join(parts[2:]) if parts[1] == "0"
                 else f"stages.{parts[1]}.downsample." + ".".join(parts[2:]))
        else:
            rest = ".".join(parts[3:]).replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc")
            k = f"stages.{parts[1]}.blocks.{parts[2]}.{rest}"
        out[k] = v
    return out


def test_swin_pretrained_lands_where_the_official_loader_puts_it() -> None:
    """The official init_weights loads checkpoint['model'] into the body by name (strict=False):
    the pretrained file's keys are the official body's, so both converters must agree."""
    file = swin_imagenet_file(**{k: SMALL_SWIN[k] for k in ("embed_dim", "depths", "num_heads")})
    ours = swin.convert_pretrained(file)
    used = {"body." + k: v for k, v in file["model"].items()
            if not k.startswith(("head.", "norm.")) and not k.endswith("attn_mask")}
    theirs = swin.convert_official(used)
    assert ours.keys() == theirs.keys() and len(ours) == 4 + 8 * 17 + 3 * 3  # stem, 8 blocks, 3 merges
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_convnext_pretrained_lands_where_the_official_loader_puts_it() -> None:
    file = convnext_imagenet_file(SMALL_CONVNEXT["depths"], SMALL_CONVNEXT["hidden_sizes"])
    ours = convnext.convert_pretrained(file)
    theirs = convnext.convert_official({"body." + k: v for k, v in _timm_names(file["model"]).items()})
    assert ours.keys() == theirs.keys() and len(ours) == 4 + 3 * 4 + 5 * 9  # stem, 3 downsamples, 5 blocks
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("kind, params, make, sizes", [
    # Swin pads each stage to even sizes (ceil), ConvNeXt's strided convolutions floor
    ("swin", SMALL_SWIN, lambda: swin_imagenet_file(8, [2, 2, 2, 2], [1, 1, 2, 2]),
     [(10, 14), (5, 7), (3, 4), (2, 2)]),
    ("convnext", SMALL_CONVNEXT, lambda: convnext_imagenet_file([1, 1, 2, 1], [8, 16, 24, 32]),
     [(10, 14), (5, 7), (2, 3), (1, 1)]),
])
def test_backbone_loads_the_pretraining_file(kind, params, make, sizes) -> None:
    backbone = Backbone(BackboneConfig(kind, params))
    left = backbone.load_pretrained(make())
    # only the output norms stay at their init, as in the official recipe
    assert left == sorted(f"hidden_states_norms.stage{i}.{p}" for i in range(1, 5) for p in ("bias", "weight"))
    assert all(torch.equal(backbone.body.hidden_states_norms[f"stage{i}"].weight, torch.ones_like(
        backbone.body.hidden_states_norms[f"stage{i}"].weight)) for i in range(1, 5))
    out = backbone(torch.randn(2, 3, 40, 56), frames=2)
    assert [tuple(x.shape[-2:]) for x in out] == sizes


def test_pretraining_file_of_another_size_is_refused() -> None:
    backbone = Backbone(BackboneConfig("swin", SMALL_SWIN))
    with pytest.raises(CheckpointError, match="does not fit this swin backbone.*wrong shape"):
        backbone.load_pretrained(swin_imagenet_file(16, [2, 2, 2, 2], [1, 1, 2, 2]))
    with pytest.raises(CheckpointError, match="not an ImageNet Swin file"):
        backbone.load_pretrained(convnext_imagenet_file([1, 1, 2, 1], [8, 16, 24, 32]))


def test_swin_keeps_window_7_and_shift_3_on_stages_smaller_than_the_window() -> None:
    """The official Swin pads every stage to a multiple of 7 and shifts odd blocks by 3, even when
    the stage is smaller than the window; transformers' SwinLayer would shrink the window and drop
    the shift there (set_shift_and_window_size) unless SwinBackbone passes always_partition."""
    body = swin.build(BackboneConfig("swin", SMALL_SWIN)).eval()
    with torch.no_grad():
        out = body(torch.randn(1, 3, 48, 80))  # stages 12x20, 6x10, 3x5, 2x3
    assert [tuple(x.shape[-2:]) for x in out] == [(12, 20), (6, 10), (3, 5), (2, 3)]
    for stage in body.swin.encoder.layers:
        assert [(b.window_size, b.shift_size) for b in stage.blocks] == [(7, 0), (7, 3)]
