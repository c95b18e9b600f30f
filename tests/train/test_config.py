"""Training recipes: YAML loading, --set overrides, errors naming the closest key, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutr.errors import ConfigError
from mutr.train.config import TrainConfig, resolve_model_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_official_recipe():
    c = TrainConfig()
    assert (c.optim.lr, c.optim.lr_backbone, c.optim.lr_text_encoder) == (1e-4, 6e-6, 1e-5)
    assert (c.optim.weight_decay, c.optim.clip_max_norm, c.optim.epochs, c.optim.lr_drop) == (5e-4, 0.1, 12, [8, 10])
    assert (c.loss.ce, c.loss.bbox, c.loss.giou, c.loss.mask, c.loss.dice) == (2, 5, 2, 2, 5)
    assert c.loss.mask_region == "padded" and c.run.seed == 42 and c.data.num_frames == 5


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim: {lr: 1.0e-4}\ndata:\n  train:\n    - {kind: synthetic, options: {reference: text}}\n")
    c = TrainConfig.from_yaml(path, ["optim.lr=2e-4", "optim.lr_drop=[3, 4]", "run.tensorboard=true",
                                     "data.train.0.options.size=[32, 48]", "model.overrides.heads.num_classes=1",
                                     "data.train.0.weight=3"])
    assert c.optim.lr == 2e-4 and c.optim.lr_drop == [3.0, 4.0] and c.run.tensorboard is True
    assert c.data.train[0].options == {"reference": "text", "size": [32, 48]}
    assert c.data.train[0].weight == 3.0
    assert resolve_model_config(c.model).heads.num_classes == 1
    again = TrainConfig.from_dict(c.to_dict())
    assert again == c


@pytest.mark.parametrize("item, hint", [
    ("optim.lrr=1", "did you mean 'optim.lr'"),
    ("optm.lr=1", "did you mean 'optim'"),
    ("data.train.0.rot=/x", "did you mean 'data.train.0.root'"),
    ("run.checkpoint_evry=3", "did you mean 'run.checkpoint_every'"),
])
def test_unknown_keys_name_the_closest(item, hint):
    with pytest.raises(ConfigError, match=hint):
        TrainConfig.from_dict({}, [item])


def test_unknown_yaml_key_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'loss.mask_region'"):
        TrainConfig.from_dict({"loss": {"mask_regoin": "valid"}})
    with pytest.raises(ConfigError, match="optim.precision must be one of"):
        TrainConfig.from_dict({}, ["optim.precision=fp8"])
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        TrainConfig.from_dict({}, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="expected key=value"):
        TrainConfig.from_dict({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    c = TrainConfig.from_yaml(path)
    resolve_model_config(c.model)
    assert c.data.train


def test_joint_recipe_matches_the_paper():
    c = TrainConfig.from_yaml(next(p for p in CONFIGS if p.name == "joint.yaml"))
    assert c.model.preset == "r50-joint"
    kinds = [d.kind for d in c.data.train]
    assert kinds == ["ref-youtube-vos", "avsbench-s4"]
    assert c.data.train[0].options["subset"] == {"expressions_per_video": 1, "keep_every": 2}
    assert (c.optim.lr, c.optim.lr_backbone, c.optim.lr_text_encoder) == (1e-4, 6e-6, 1e-5)
    assert c.optim.epochs == 12 and c.optim.lr_drop == [8, 10]
