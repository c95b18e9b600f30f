"""ConvMAE-B backbone (mutr.model.backbones.convmae): official parameter counts, the official
checkpoint layout, the ConvMAE ImageNet pretraining layout, gradients on a tiny configuration.

Equivalence with the official model is tests/test_official_equivalence.py (fixture
tests/fixtures/official/convmae_base/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mutr import MUTR, MUTRConfig
from mutr.config import BackboneConfig
from mutr.convert import convert_state_dict, official_backbone_preset
from mutr.errors import CheckpointError, ConfigError
from mutr.model.backbones import convmae

FIXTURES = Path(__file__).parents[1] / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official_state_dicts" / "convmae_base.json").read_text())["keys"]
BODY = {k[len("backbone.0."):]: v for k, v in OFFICIAL.items() if k.startswith("backbone.0.")}


def _random(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}


def test_convmae_b_has_exactly_the_official_parameters() -> None:
    """Counts of the official model with --backbone convmae_base (harness README table)."""
    with torch.device("meta"):
        model = MUTR(MUTRConfig.preset("convmae-b"))
    assert model.num_parameters() == 244_105_087
    assert model.num_parameters(trainable_only=True) == 119_459_455
    assert sum(p.numel() for p in model.backbone.parameters()) == 84_672_000
    assert model.backbone.channels == [256, 384, 768, 768] and model.backbone.temporal is False


def test_official_layout_maps_every_key_and_infers_the_preset() -> None:
    assert len(BODY) == 229
    state = {k: torch.zeros(v, device="meta") for k, v in OFFICIAL.items()}
    assert official_backbone_preset(state) == "convmae-b"
    converted = convmae.convert_official({k: torch.zeros(v, device="meta") for k, v in BODY.items()})
    assert len(converted) == len(BODY)
    assert converted["body.blocks3.1.attention.rel_pos_h"].shape == (79, 64)  # global block, --max_size 640
    assert converted["body.blocks3.0.attention.rel_pos_w"].shape == (27, 64)  # window 14


def test_other_max_size_and_other_backbones_are_refused() -> None:
    body = {k: torch.zeros(v, device="meta") for k, v in BODY.items()}
    body["body.blocks3.4.attn.rel_pos_h"] = torch.zeros(63, 64, device="meta")  # --max_size 512
    with pytest.raises(CheckpointError, match="63 rows.*--max_size 512"):
        convmae.convert_official(body)
    swin = json.loads((FIXTURES / "official_state_dicts" / "swin_l_p4w7.json").read_text())["keys"]
    with pytest.raises(CheckpointError, match="not a ConvMAE-B"):
        convmae.convert_official({k[len("backbone.0."):]: torch.zeros(v, device="meta")
                                  for k, v in swin.items() if k.startswith("backbone.0.")})
    state = {k: torch.zeros(v, device="meta") for k, v in swin.items()}
    with pytest.raises(CheckpointError, match="fits preset 'swin-l'"):
        convert_state_dict(state, "convmae-b")


def _pretrain_layout() -> dict[str, list[int]]:
    """ConvMAE-Base's ImageNet pretraining state_dict (MaskedAutoencoderConvViT): the encoder
    under the official names without relative positions or norm3/norm4, its final ``norm``, the
    stage decoders and the MAE decoder (two of its blocks, enough to be ignored)."""
    keys = {k[len("body."):]: v for k, v in BODY.items()
            if "rel_pos" not in k and not k.startswith(("body.norm3", "body.norm4"))}
    keys.update({"norm.weight": [768], "norm.bias": [768], "mask_token": [1, 1, 512],
                 "stage1_output_decode.weight": [768, 256, 4, 4], "stage2_output_decode.weight": [768, 384, 2, 2],
                 "decoder_embed.weight": [512, 768], "decoder_pos_embed": [1, 196, 512],
                 "decoder_blocks.0.attn.qkv.weight": [1536, 512], "decoder_pred.weight": [768, 512]})
    return keys


def test_pretrained_file_loads_as_the_official_non_strict_load() -> None:
    file = {"model": _random(_pretrain_layout()), "epoch": torch.tensor(1599)}
    out = convmae.convert_pretrained(file)
    body = convmae.build(BackboneConfig("convmae"))
    missing, unexpected = body.load_state_dict({k[len("body."):]: v for k, v in out.items()}, strict=False)
    assert not unexpected
    # what the file lacks keeps the official init: zero relative positions, LayerNorm 1 / 0
    assert sorted(missing) == sorted([f"blocks3.{i}.attention.rel_pos_{a}" for i in range(11) for a in "hw"]
                                     + ["norm3.weight", "norm3.bias", "norm4.weight", "norm4.bias"])
    assert all(not body.get_parameter(k).any() for k in missing if "rel_pos" in k)
    assert torch.equal(body.norm4.weight, torch.ones(768))
    assert torch.equal(body.blocks3[5].attention.qkv.weight, file["model"]["blocks3.5.attn.qkv.weight"])
    assert torch.equal(body.pos_embed, file["model"]["pos_embed"])
    with torch.no_grad():
        feats = body(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 24), (1, 384, 8, 12), (1, 768, 4, 6), (1, 768, 2, 3)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_pretrained_file_of_another_model_is_refused() -> None:
    bad = _random(_pretrain_layout())
    bad["blocks3.0.attn.qkv.weight"] = torch.zeros(3072, 1024)  # ConvMAE-Large
    with pytest.raises(CheckpointError, match="blocks3.0.attn.qkv.weight has shape"):
        convmae.convert_pretrained(bad)
    with pytest.raises(CheckpointError, match="not a ConvMAE pretrained file"):
        convmae.convert_pretrained({"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})


TINY = dict(embed_dims=(8, 12, 16), depths=(1, 1, 3), num_heads=2, window_size=3, window_blocks=(0, 2),
            max_size=64, drop_path_rate=0.1)


def test_tiny_configuration_trains_and_pads_windows() -> None:
    """Every parameter gets a gradient; a 5x7 stride-16 map is padded to 6x9 for window 3 and
    the global block resizes its 7-row relative positions to 13 rows."""
    body = convmae.build(BackboneConfig("convmae", TINY)).train()
    feats = body(torch.randn(2, 3, 80, 112))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 20, 28), (2, 12, 10, 14), (2, 16, 5, 7), (2, 16, 2, 3)]
    sum(f.square().mean() for f in feats).backward()
    assert all(p.grad is not None for p in body.parameters())
    with pytest.raises(ConfigError, match="unknown ConvMAE backbone parameter"):
        convmae.build(BackboneConfig("convmae", dict(window=7)))
