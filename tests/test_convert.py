"""Official checkpoint conversion: real file shapes, safety, and clear errors.

A small checkpoint in the *official* key layout is made from a tiny mutr model by inverting the
rename table on the official ResNet-50 key list (every tiny key is also an r50 key).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mutr import MUTR, MUTRConfig
from mutr.convert import ALIAS_PREFIX, convert_state_dict, load_official_checkpoint, official_to_mutr_key
from mutr.errors import CheckpointError
from mutr_cli.main import app

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_official() -> tuple[MUTR, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.add_(0.01 * torch.randn_like(p))
    official_keys = json.loads((FIXTURES / "official_state_dicts" / "resnet50.json").read_text())["keys"]
    inverse = {official_to_mutr_key(k): k for k in official_keys if not k.startswith(ALIAS_PREFIX)}
    state = {inverse[k]: v.clone() for k, v in model.state_dict().items()}
    for k in list(state):  # the official model also stores the box heads under transformer.decoder
        if k.startswith("bbox_embed."):
            state["transformer.decoder." + k] = state[k].clone()
    return model, state


def _same_outputs(a: MUTR, b: MUTR) -> None:
    video = torch.randn(1, 2, 3, 64, 64)
    ids = torch.tensor([[0, 8, 9, 2]])
    with torch.no_grad():
        for x, y in zip(a(video, input_ids=ids).to_dict().values(), b(video, input_ids=ids).to_dict().values()):
            assert torch.equal(x, y)


def test_real_file_variants_load_and_convert(tmp_path, tiny_official) -> None:
    model, state = tiny_official
    wrapped = {"model": {"module." + k: v for k, v in state.items()}, "args": argparse.Namespace(lr=1e-4),
               "epoch": 5}
    wrapped["model"]["module.text_encoder.embeddings.position_ids"] = torch.arange(66)[None]
    wrapped["model"]["module.backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(0)
    torch.save(wrapped, tmp_path / "official.pth")
    loaded = load_official_checkpoint(tmp_path / "official.pth")
    assert "text_encoder.embeddings.position_ids" in loaded
    converted, config = convert_state_dict(loaded, "tiny")
    assert config.heads.with_box_refine
    again = MUTR(config).eval()
    again.load_state_dict_checked(converted)
    _same_outputs(model, again)
    # a bare state_dict works too
    torch.save(state, tmp_path / "bare.pth")
    assert set(load_official_checkpoint(tmp_path / "bare.pth")) == set(state)


def test_cli_convert_roundtrip_and_overwrite(tmp_path, tiny_official) -> None:
    model, state = tiny_official
    torch.save({"model": state}, tmp_path / "official.pth")
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp_path / "official.pth"), str(tmp_path / "out"), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out") in result.stdout
    _same_outputs(model, MUTR.from_pretrained(tmp_path / "out"))
    again = runner.invoke(app, ["convert", str(tmp_path / "official.pth"), str(tmp_path / "out"), "--preset", "tiny"])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert runner.invoke(app, ["convert", str(tmp_path / "official.pth"), str(tmp_path / "out"), "--preset", "tiny",
                               "--overwrite"]).exit_code == 0


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path) -> None:
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    torch.save({"model": {"a": torch.zeros(1)}, "payload": evil}, tmp_path / "evil.pth")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "would run code" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_bad_files_give_one_line_errors(tmp_path, tiny_official, kind) -> None:
    path = tmp_path / "x.pth"
    if kind == "truncated":
        torch.save({"model": tiny_official[1]}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    result = CliRunner().invoke(app, ["convert", str(path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) <= 2
    assert "Traceback" not in result.output


def test_wrong_preset_lists_keys(tiny_official) -> None:
    _, state = tiny_official
    with pytest.raises(CheckpointError, match="does not fit preset 'r50'.*(missing|wrong shape)"):
        convert_state_dict(state, "r50")


def test_aliased_box_heads_must_match(tiny_official) -> None:
    _, state = tiny_official
    bad = dict(state)
    key = "transformer.decoder.bbox_embed.0.layers.0.weight"
    bad[key] = bad[key] + 1
    with pytest.raises(CheckpointError, match="should equal bbox_embed.0.layers.0.weight"):
        convert_state_dict(bad, "tiny")


def test_r50_layout_infers_preset_and_maps_every_key() -> None:
    shapes = json.loads((FIXTURES / "official_state_dicts" / "resnet50.json").read_text())["keys"]
    state = {k: torch.zeros(v) for k, v in shapes.items()}
    for k in state:
        if k.startswith(ALIAS_PREFIX):
            state[k] = state[k[len("transformer.decoder."):]]
    converted, config = convert_state_dict(state)
    assert config.name == "r50" and config.heads.with_box_refine and config.heads.num_classes == 1
    assert len(converted) == 887
