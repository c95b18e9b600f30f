"""A run killed with SIGKILL and resumed ends with the same bits as an uninterrupted run (CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from mutr.train import checkpoint as ckpt
from mutr.train.trainer import Trainer

CHILD = textwrap.dedent("""
    import os, signal, sys
    from mutr.train.config import TrainConfig
    from mutr.train.trainer import Trainer

    kill_at = int(sys.argv[2])

    def die(event):
        if event.kind == "step" and event.step == kill_at:  # mid-run, after the last checkpoint
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer(TrainConfig.from_yaml(sys.argv[1]), callbacks=[die]).fit()
""")


@pytest.mark.slow  # slow: subprocesses; ~10 s on 2 cores (one cold subprocess)
def test_sigkill_then_resume_is_bit_identical(tmp_path, recipe):
    n = 2
    full = recipe(tmp_path / "full", steps=2 * n)  # checkpoints every 2 steps, run.threads 1
    Trainer(full).fit()

    killed = recipe(tmp_path / "killed", steps=2 * n)
    path = tmp_path / "killed.yaml"
    killed.to_yaml(path)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(n + 1)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load_state(tmp_path / "killed" / "checkpoints")["step"] == n
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))

    result = Trainer(killed).fit()  # resumes from step n (auto)
    assert result.resumed_from == n and result.step == 2 * n
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    sa, sb = ckpt.load_state(tmp_path / "full" / "checkpoints"), ckpt.load_state(tmp_path / "killed" / "checkpoints")
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])
    assert sa["sampler"] == sb["sampler"]
