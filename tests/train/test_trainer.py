"""The training loop in process: run folder, bit-identical resume, NaN stop, learning, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mutr.errors import CheckpointError, OutputExistsError
from mutr.train import checkpoint as ckpt
from mutr.train.trainer import Trainer, TrainingDiverged


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_run_folder_and_bit_identical_resume(tmp_path, recipe):
    events = []
    steps = dict(optim={"lr_drop_steps": [1]}, run={"checkpoint_every": 1, "log_every": 1, "threads": 1})
    full = Trainer(recipe(tmp_path / "full", steps=2, **steps), callbacks=[events.append]).fit()
    assert full.step == 2
    run = tmp_path / "full"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "curves.png", "checkpoints/state.pt",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_ce_0"} <= set(rows[0]["losses"])
    assert [e.kind for e in events][:2] == ["start", "step"] and events[-1].kind == "end"
    assert events[1].lr is not None and events[-2].kind == "checkpoint"
    # the lr drops 10x after step 1 (lr_drop_steps [1])
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[1]["lr"] == pytest.approx(1e-4)

    # the same recipe stopped at step 1 (max_steps), then resumed to 2, ends with the same bits
    Trainer(recipe(tmp_path / "half", steps=1, **steps)).fit()
    resumed = Trainer(recipe(tmp_path / "half", steps=2, **steps)).fit()
    assert resumed.resumed_from == 1 and resumed.step == 2
    a, b = _weights(run), _weights(tmp_path / "half")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_b = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_b if r["kind"] == "train"] == [r["loss"] for r in rows if r["kind"] == "train"]
    state = ckpt.load_state(tmp_path / "half" / "checkpoints")
    assert state["step"] == 2 and state["sampler"]["epoch"] == 0 and state["sampler"]["position"] == 4

    # the exported model reloads with its own tokenizer
    from mutr import MUTR

    model = MUTR.from_pretrained(run / "model")
    ids, mask = model.tokenize(["the red circle"])
    assert ids.shape[1] == 5


def test_resume_modes_accumulation_and_validation(tmp_path, recipe):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(recipe(tmp_path / "r"), resume=True).fit()
    # 2 micro-batches per step: 2 steps consume the 4 batches of an epoch (8 clips, batch 2)
    cfg = recipe(tmp_path / "r", steps=2, batch=1, optim={"accumulate": 2, "max_steps": 2, "lr_drop_steps": []})
    cfg.data.samples_per_epoch = 4
    cfg.data.val = [cfg.data.train[0].__class__(kind="synthetic", options={"reference": "text", "num_videos": 1,
                                                                           "size": [64, 64]})]
    result = Trainer(cfg).fit()
    state = ckpt.load_state(tmp_path / "r" / "checkpoints")
    assert state["step"] == 2 and (state["sampler"]["epoch"], state["sampler"]["position"]) == (1, 0)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["global_batch"] == 2
    assert {"synthetic-text/J", "synthetic-text/F", "synthetic-text/J&F"} <= set(result.metrics)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["train", "train", "val"]
    with pytest.raises(OutputExistsError, match="already holds a run"):
        Trainer(cfg, resume=False).fit()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, recipe):
    from mutr.train import losses

    real = losses.SetCriterion.forward
    calls = {"n": 0}

    def poisoned(self, output, targets, num_boxes=None):
        out = real(self, output, targets, num_boxes)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step's loss
            out["loss_giou"] = out["loss_giou"] * float("nan")
        return out

    monkeypatch.setattr(losses.SetCriterion, "forward", poisoned)
    cfg = recipe(tmp_path / "nan", steps=4, modalities=("text",))
    with pytest.raises(TrainingDiverged, match=r"not finite at step 3 .*loss_giou=nan.*step 2\)"):
        Trainer(cfg).fit()
    state = ckpt.load_state(tmp_path / "nan" / "checkpoints")
    assert state["step"] == 2
    rows = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "diverged" and rows[-1]["step"] == 3


def test_cli_trains_and_resumes(tmp_path, recipe):
    from typer.testing import CliRunner

    import mutr_cli.train  # noqa: F401  (registers the command)
    from mutr_cli.main import app

    cfg = recipe(tmp_path / "unused", steps=1, modalities=("audio",))
    recipe = tmp_path / "recipe.yaml"
    cfg.to_yaml(recipe)
    out = tmp_path / "cli-run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", str(recipe), "--out", str(out), "--set", "run.log_every=1"])
    assert result.exit_code == 0, result.output
    assert str(out / "model") in result.stdout
    result = runner.invoke(app, ["train", "--resume", str(out), "--set", "optim.max_steps=2"])
    assert result.exit_code == 0, result.output
    assert ckpt.load_state(out / "checkpoints")["step"] == 2
    result = runner.invoke(app, ["train", "--config", str(recipe), "--set", "optim.lrr=1"])
    assert result.exit_code == 1 and "did you mean 'optim.lr'" in result.output
