"""Presets: the released r50 configuration matches the official model exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mutr import MUTR, MUTRConfig
from mutr.convert import ALIAS_PREFIX, official_to_mutr_key
from mutr.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def _meta_model(name: str) -> MUTR:
    with torch.device("meta"):
        return MUTR(MUTRConfig.preset(name))


def test_r50_has_exactly_the_official_parameters() -> None:
    """Counts from the official model (architecture.md §17, harness README)."""
    model = _meta_model("r50")
    assert model.num_parameters() == 186_263_103
    assert model.num_parameters(trainable_only=True) == 61_395_071
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.")) == 23_454_912
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("text_encoder.model.")) == 124_645_632
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("mti.")) == 8_685_824
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("pixel_decoder.")) == 9_530_624


def test_every_official_key_has_its_place() -> None:
    official = json.loads((FIXTURES / "official_state_dicts" / "resnet50.json").read_text())["keys"]
    assert len(official) == 911
    model = _meta_model("r50")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = model.state_dict()
    mapped_params, mapped_buffers, aliases = set(), set(), 0
    for key, shape in official.items():
        if key.startswith(ALIAS_PREFIX):
            twin = official_to_mutr_key(key[len("transformer.decoder."):])
            assert twin in params and list(params[twin].shape) == shape
            aliases += 1
            continue
        ours = official_to_mutr_key(key)
        assert ours in state, f"{key} -> {ours} is not a mutr key"
        assert list(state[ours].shape) == shape, key
        (mapped_params if ours in params else mapped_buffers).add(ours)
    assert aliases == 24
    assert len(mapped_params) == 675 and mapped_params == set(params)
    assert len(mapped_buffers) == 212
    assert mapped_buffers == {k for k in state if k not in params}


def test_all_presets_build_and_tiny_is_small() -> None:
    for name in MUTRConfig.preset_names():
        model = _meta_model(name)
        assert model.num_parameters() > 0, name
    tiny = MUTR(MUTRConfig.preset("tiny"))
    assert 100_000 < tiny.num_parameters() < 1_000_000
    # r101 adds 17 layer3 bottlenecks of 1024*256 + 256*256*9 + 256*1024 conv weights (BN are buffers)
    assert _meta_model("r101").num_parameters() == 186_263_103 + (23 - 6) * 1_114_112


def test_unknown_preset_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'r50'"):
        MUTRConfig.preset("r5O")


def test_yaml_and_json_roundtrip(tmp_path) -> None:
    for name in MUTRConfig.preset_names():
        cfg = MUTRConfig.preset(name)
        cfg.to_yaml(tmp_path / f"{name}.yaml")
        assert MUTRConfig.from_yaml(tmp_path / f"{name}.yaml") == cfg
        cfg.to_json(tmp_path / f"{name}.json")
        assert MUTRConfig.from_json(tmp_path / f"{name}.json") == cfg


def test_yaml_preset_with_overrides_and_unknown_key(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("preset: tiny\ntransformer:\n  num_queries: 3\n")
    cfg = MUTRConfig.from_yaml(tmp_path / "a.yaml")
    assert cfg.transformer.num_queries == 3 and cfg.name == "tiny"
    (tmp_path / "b.yaml").write_text("preset: tiny\ntransformer:\n  num_querys: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'transformer.num_queries'"):
        MUTRConfig.from_yaml(tmp_path / "b.yaml")
