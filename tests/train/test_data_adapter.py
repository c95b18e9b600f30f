"""Recipe datasets on the real on-disk layouts (written by mutr.data.write_synthetic)."""

from __future__ import annotations

import pytest
import torch

from mutr.data import write_synthetic
from mutr.errors import ConfigError
from mutr.train.config import TrainConfig
from mutr.train.data import ExpressionSubset, build_dataset, build_train_data, collate_by_modality


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {
        "ytvos": write_synthetic("ytvos", base / "ytvos", num_videos=3, num_frames=6, size=(48, 64),
                                 splits=["train"]),
        "s4": write_synthetic("avsbench-s4", base / "s4", num_videos=2, size=(48, 64), splits=["train"]),
    }


def _recipe(roots, **ytvos_options):
    return TrainConfig.from_dict({"data": {
        "train": [{"kind": "ref-youtube-vos", "root": str(roots["ytvos"]), "options": ytvos_options},
                  {"kind": "avsbench-s4", "root": str(roots["s4"])}],
        "num_frames": 3, "batch_size": 2, "augment": False}})


def test_joint_subset_keeps_one_expression_per_video_and_every_other_clip(roots):
    cfg = _recipe(roots, subset={"expressions_per_video": 1, "keep_every": 2})
    ds = build_dataset(cfg.data.train[0], cfg.data, seed=0)
    assert isinstance(ds, ExpressionSubset)
    metas = ds.base.metas
    first = {}
    for m in metas:
        first.setdefault(m.video, min((x.exp_id for x in metas if x.video == m.video), key=int))
    one_per_video = [i for i, m in enumerate(metas) if m.exp_id == first[m.video]]
    assert ds.indices == one_per_video[::2]
    assert len({metas[i].video for i in ds.indices}) >= 2
    sample = ds.get(0, [0, 0])
    assert sample.caption and sample.frames.shape[0] == 3


def test_joint_batches_are_modality_homogeneous(roots):
    cfg = _recipe(roots)
    joint, sampler = build_train_data(cfg.data, seed=0)
    keys = list(sampler)
    assert len(keys) % 2 == 0
    for i in range(0, len(keys), 2):
        assert keys[i][0] == keys[i + 1][0]  # groups of batch_size from one dataset
        parts = collate_by_modality([joint[tuple(k)] for k in keys[i:i + 2]])
        assert len(parts) == 1
    audio = next(joint[tuple(k)] for k in keys if k[0] == 1)
    assert audio.audio.shape == (5, 1, 96, 64) and audio.target["has_gt"].tolist() == [True] + [False] * 4


def test_mixed_groups_split_into_sub_batches(roots):
    cfg = _recipe(roots)
    joint, _ = build_train_data(cfg.data, seed=0)
    text = joint[(0, 0, 1)]
    audio = joint[(1, 0, 1)]
    parts = collate_by_modality([text, audio, text])
    assert [p.captions is not None for p in parts] == [True, False]
    assert parts[0].frames.shape[0] == 2 and parts[1].frames.shape[0] == 1
    assert parts[0].frames.shape[-1] % 32 == 0 and parts[0].mask.dtype == torch.bool


def test_recipe_errors_name_the_fix(roots):
    cfg = _recipe(roots, subsett={"keep_every": 2})
    with pytest.raises(ConfigError, match="has no option 'subsett'"):
        build_dataset(cfg.data.train[0], cfg.data, seed=0)
    cfg = TrainConfig.from_dict({"data": {"train": [{"kind": "ytvos"}]}})
    with pytest.raises(ConfigError, match="unknown dataset kind 'ytvos'"):
        build_dataset(cfg.data.train[0], cfg.data, seed=0)
    cfg = TrainConfig.from_dict({"data": {"batch_size": 2, "group_size": 1}})
    with pytest.raises(ConfigError, match="group_size equal to data.batch_size"):
        build_train_data(cfg.data, seed=0, rank=0, world_size=2)
