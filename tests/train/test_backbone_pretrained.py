"""`mutr train` starts a backbone family from the official recipe's pretraining file: a local
.pth or a registry name (kind backbone, fetched from a server on 127.0.0.1), read with
``torch.load(weights_only=True)`` and mapped by the family's ``convert_pretrained``."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mutr import hub
from mutr.errors import CheckpointError, ConfigError
from mutr.model.backbones import convnext, swin
from mutr.train.trainer import Trainer
from pretrained_files import SMALL_CONVNEXT, SMALL_SWIN, convnext_imagenet_file, swin_imagenet_file


def _recipe(recipe, out: Path, kind: str, params: dict, pretrained: str):
    backbone = {"kind": kind, "params": params, "trainable": [], "pretrained": pretrained}
    # lr_backbone 0: after the step the backbone still holds exactly the file's weights
    return recipe(out, steps=1, model={"preset": "tiny-joint", "tokenizer": "synthetic",
                                       "overrides": {"backbone": backbone}},
                  optim={"lr_backbone": 0.0, "lr_drop_steps": []}, run={"checkpoint_every": 1, "threads": 1})


def _assert_backbone_holds(run: Path, converted: dict[str, torch.Tensor]) -> None:
    weights = load_file(str(run / "model" / "model.safetensors"))
    for key, value in converted.items():
        assert torch.equal(weights["backbone." + key], value), key


def test_train_starts_from_a_local_swin_file(tmp_path, recipe) -> None:
    file = swin_imagenet_file(8, [2, 2, 2, 2], [1, 1, 2, 2])
    torch.save(file, tmp_path / "swin_small_22k.pth")
    Trainer(_recipe(recipe, tmp_path / "run", "swin", SMALL_SWIN, str(tmp_path / "swin_small_22k.pth"))).fit()
    _assert_backbone_holds(tmp_path / "run", swin.convert_pretrained(file))


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 and a cache of our own."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("MUTR_HOME", str(tmp_path / "home"))
    yield folder, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_train_starts_from_a_registry_convnext_file(tmp_path, recipe, served, monkeypatch) -> None:
    folder, url = served
    file = convnext_imagenet_file([1, 1, 2, 1], [8, 16, 24, 32])
    torch.save(file, folder / "convnext_small_22k.pth")
    entry = hub.WeightsEntry("convnext-test-in22k", "backbone",
                             (hub.WeightFile("convnext_small_22k.pth", urls=(f"{url}/convnext_small_22k.pth",)),),
                             preset="convnext-l", licence="test")
    monkeypatch.setitem(hub.REGISTRY, entry.name, entry)
    Trainer(_recipe(recipe, tmp_path / "run", "convnext", SMALL_CONVNEXT, entry.name)).fit()
    _assert_backbone_holds(tmp_path / "run", convnext.convert_pretrained(file))
    assert hub.is_downloaded(entry.name)


def test_bad_pretraining_sources_are_one_line_errors(tmp_path, recipe) -> None:
    torch.save(swin_imagenet_file(8, [2, 2, 2, 2], [1, 1, 2, 2]), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        Trainer(_recipe(recipe, tmp_path / "a", "swin", SMALL_SWIN, str(tmp_path / "w.pth"))).fit()
    with pytest.raises(ConfigError, match="is a official-mutr entry, not backbone weights"):
        Trainer(_recipe(recipe, tmp_path / "b", "swin", SMALL_SWIN, "mutr-swin-l")).fit()
    with pytest.raises(ConfigError, match="neither a file nor a registry name"):
        Trainer(_recipe(recipe, tmp_path / "c", "swin", SMALL_SWIN, "swin-l-in23k")).fit()
    torch.save(convnext_imagenet_file([1, 1, 2, 1], [8, 16, 24, 32]), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="not an ImageNet Swin file"):
        Trainer(_recipe(recipe, tmp_path / "d", "swin", SMALL_SWIN, str(tmp_path / "c.pth"))).fit()
