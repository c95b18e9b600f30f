"""`mutr convert` on official files of the other released backbones: a wrong --preset, an unknown
backbone, a truncated or mixed file give one line naming the fitting preset, and nothing is written.

The files hold every key of the official state_dict (tests/fixtures/official_state_dicts/) but
1-element tensors, except the few whose shape the preset inference reads: the errors below come
before any shape check of the weights, so the files stay small.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mutr.model.backbones.swin import _window_index
from mutr_cli.main import app

FIXTURES = Path(__file__).parent / "fixtures"
_SHAPED = ("backbone.0.body.patch_embed.proj.weight", "class_embed.0.weight")


def _official(backbone: str) -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "official_state_dicts" / f"{backbone}.json").read_text())["keys"]
    index = _window_index()  # real checkpoints hold the Swin relative position index; it is checked
    return {k: index if k.endswith("relative_position_index") else torch.zeros(v) if k in _SHAPED
            else torch.zeros(1) for k, v in shapes.items()}


def _convert(tmp_path: Path, state: dict, *args: str, truncate: bool = False):
    path = tmp_path / "official.pth"
    torch.save({"model": state}, path)
    if truncate:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = CliRunner().invoke(app, ["convert", str(path), str(tmp_path / "out"), *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("backbone, fits, preset", [
    ("swin_l_p4w7", "swin-l", "r50"),
    ("convnext_large", "convnext-l", "swin-l"),
    ("swin_l_p4w7", "swin-l", "convnext-l"),
])
def test_a_file_of_another_backbone_names_the_preset_that_fits(tmp_path, backbone, fits, preset) -> None:
    line = _convert(tmp_path, _official(backbone), "--preset", preset)
    assert f"does not fit preset '{preset}'" in line and f"--preset {fits}" in line


def test_unknown_backbone(tmp_path) -> None:
    state = {k: v for k, v in _official("resnet50").items() if not k.startswith("backbone.")}
    state["backbone.0.body.blocks.0.attn.weight"] = torch.zeros(1)
    line = _convert(tmp_path, state)
    assert "none of the released MUTR backbones" in line and "backbone.0.body.blocks.0.attn.weight" in line


def test_truncated_swin_file(tmp_path) -> None:
    line = _convert(tmp_path, _official("swin_l_p4w7"), truncate=True)
    assert "not a readable PyTorch checkpoint" in line and "truncated" in line


def test_mixed_file_half_swin_half_convnext(tmp_path) -> None:
    swin, cnx = _official("swin_l_p4w7"), _official("convnext_large")
    body = sorted(k for k in swin if k.startswith("backbone.0.body.layers."))
    mixed = {k: v for k, v in swin.items() if k not in body[len(body) // 2:]}
    mixed.update({k: v for k, v in cnx.items() if k.startswith("backbone.0.body.stages.3.")})
    line = _convert(tmp_path, mixed)
    assert "does not fit preset 'swin-l'" in line and "not a Swin" in line


def test_half_the_swin_keys(tmp_path) -> None:
    swin = _official("swin_l_p4w7")
    body = sorted(k for k in swin if k.startswith("backbone.0.body.layers.2."))
    line = _convert(tmp_path, {k: v for k, v in swin.items() if k not in body[::2]})
    assert "does not fit preset 'swin-l'" in line and "missing" in line
