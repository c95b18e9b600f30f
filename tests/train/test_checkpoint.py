"""Training state files: atomic, weights_only-loadable, RNG round trip, pruning, damage reports."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mutr.errors import CheckpointError
from mutr.train import checkpoint as ckpt


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    state = ckpt.rng_state()
    ckpt.atomic_torch_save({"format": ckpt.FORMAT_VERSION, "rng": [state]}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = ckpt.load_state(tmp_path / "s.pt")  # torch.load(weights_only=True) inside
    ckpt.set_rng_state(loaded["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_full_state_saves_and_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"name": "rest", "params": list(model.parameters()), "lr": 1e-3}])
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = ckpt.training_state(model=model, optimizer=opt, scheduler=sched, scaler=scaler, step=7,
                                sampler={"epoch": 1, "position": 4}, rng=[ckpt.rng_state()])
    for step in (7, 8, 9):
        state["step"] = step
        ckpt.save_state(state, tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-00000008.pt", "state-00000009.pt", "state.pt"]
    loaded = ckpt.load_state(tmp_path)
    assert loaded["step"] == 9 and loaded["sampler"] == {"epoch": 1, "position": 4}
    opt2 = torch.optim.AdamW([{"name": "rest", "params": list(model.parameters()), "lr": 1e-3}])
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.param_groups[0]["name"] == "rest"
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_damaged_or_missing_state_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="no training state"):
        ckpt.load_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_state(tmp_path)


def test_state_with_code_is_refused(tmp_path):
    torch.save({"format": ckpt.FORMAT_VERSION, "evil": np.random.RandomState}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError):
        ckpt.load_state(tmp_path)
