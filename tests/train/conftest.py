"""Fixtures for the training tests: tiny synthetic recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutr.train.config import TrainConfig

LR = 1e-3


def tiny_recipe(out_dir: Path, *, steps: int = 4, modalities=("text", "audio"), size=(64, 64), frames: int = 2,
                batch: int = 2, **sections) -> TrainConfig:
    data = {
        "train": [{"kind": "synthetic", "name": f"syn-{m}", "options": {"reference": m, "num_videos": 6,
                                                                        "size": list(size)}}
                  for m in modalities],
        "num_frames": frames, "batch_size": batch, "num_workers": 0, "augment": False,
        "samples_per_epoch": 8, "val_size": 0,
    }
    raw = {
        "model": {"preset": "tiny-joint", "tokenizer": "synthetic"},
        "data": data,
        "optim": {"lr": LR, "lr_backbone": LR, "lr_text_encoder": LR, "max_steps": steps, "lr_drop_steps": [3]},
        "run": {"out_dir": str(out_dir), "log_every": 1, "checkpoint_every": 2, "threads": 1},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(raw)


@pytest.fixture
def recipe():
    """``recipe(out_dir, steps=4, modalities=("text", "audio"), ...)`` -> a tiny TrainConfig."""
    return tiny_recipe
