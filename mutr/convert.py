"""Convert the official MUTR checkpoints (OpenGVLab/MUTR ``.pth``) to mutr checkpoints.

The rename table below maps every official key outside the backbone to mutr's name, and the
ResNet backbones' keys (transformers' ResNetBackbone); the other backbones' keys are converted by
their family module (``mutr.model.backbones.<kind>.convert_official``). Each is tested against the
full official key list of its backbone. Loading never executes code: ``torch.load(weights_only=True)`` with
only ``argparse.Namespace`` allow-listed (the ``args`` entry of the official files).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from mutr.config import MUTRConfig
from mutr.errors import CheckpointError

# (official regex, mutr replacement), applied first-match-wins.
RENAMES: list[tuple[str, str]] = [
    # torchvision ResNet -> transformers ResNetBackbone
    (r"^backbone\.0\.body\.conv1\.", "backbone.body.embedder.embedder.convolution."),
    (r"^backbone\.0\.body\.bn1\.", "backbone.body.embedder.embedder.normalization."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.0\.", "backbone.body.encoder.stages.{s}.layers.\\2.shortcut.convolution."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.1\.", "backbone.body.encoder.stages.{s}.layers.\\2.shortcut.normalization."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.conv(\d)\.", "backbone.body.encoder.stages.{s}.layers.\\2.layer.{k}.convolution."),
    (r"^backbone\.0\.body\.layer(\d)\.(\d+)\.bn(\d)\.", "backbone.body.encoder.stages.{s}.layers.\\2.layer.{k}.normalization."),
    # reference encoder
    (r"^text_encoder\.", "text_encoder.model."),
    (r"^resizer\.", "text_encoder.resizer."),
    # fusion, MTA, heads
    (r"^fusion_module\.", "fusion."),
    (r"^MTA\.layers\.0\.", "mta.layer."),
    (r"^class_embed\.", "heads.class_embed."),
    (r"^bbox_embed\.", "heads.bbox_embed."),
    (r"^controller\.", "heads.mask_head.controller."),
    # pixel decoder convs carry their norm as a child
    (r"^pixel_decoder\.(adapter|layer)_(\d)\.weight$", "pixel_decoder.\\1_\\2.conv.weight"),
    # MTI decoder lists
    (r"^mti\.transformer_cross_attention_layers\.", "mti.dec_cross_attn."),
    (r"^mti\.transformer_self_attention_layers\.", "mti.dec_self_attn."),
    (r"^mti\.transformer_ffn_layers\.", "mti.dec_ffn."),
]
ALIAS_PREFIX = "transformer.decoder.bbox_embed."  # the same tensors as bbox_embed.* (box refine)
_DROP = re.compile(r"(^text_encoder\.embeddings\.position_ids$|total_params$|total_ops$|num_batches_tracked$)")
_COMPILED = [(re.compile(p), r) for p, r in RENAMES]


def official_to_mutr_key(key: str) -> str:
    """Rename one official key; keys not in the table keep their name (input_proj, transformer, ...)."""
    for pattern, repl in _COMPILED:
        match = pattern.match(key)
        if match:
            out = repl
            if "{s}" in out:
                out = out.replace("{s}", str(int(match.group(1)) - 1))
            if "{k}" in out:
                out = out.replace("{k}", str(int(match.group(3)) - 1))
            return pattern.sub(out, key, count=1)
    return key


def load_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read an official ``.pth`` safely and return its bare state_dict (official names)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path} contains pickled objects that would run code when loaded; refused "
                "(only plain tensors and argparse.Namespace are accepted)") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0][:120]}); "
                              "is the file truncated or of another type? download it again") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected a dict of tensors or {{'model': ...}})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


# (embed dim, blocks in stage 3) of the official Video-Swin patch embedding -> preset
_VIDEO_SWIN = {(96, 6): "video-swin-t", (96, 18): "video-swin-s", (128, 18): "video-swin-b"}
_RESNETS = {6: "r50", 23: "r101"}


def official_backbone_preset(official: dict[str, Tensor]) -> str:
    """The preset of an official state_dict's backbone, from its keys and shapes alone."""
    def blocks(pattern: str) -> int:
        found = {int(m.group(1)) for k in official for m in [re.match(pattern, k)] if m}
        return max(found) + 1 if found else 0

    resnet = blocks(r"backbone\.0\.body\.layer3\.(\d+)\.")
    patch = official.get("backbone.0.body.patch_embed.proj.weight")
    if resnet:
        if resnet not in _RESNETS:
            raise CheckpointError(f"unknown ResNet depth (layer3 has {resnet} blocks); expected r50 (6) or r101 (23)")
        return _RESNETS[resnet]
    if patch is not None and patch.ndim == 4:
        return "swin-l"
    if patch is not None and patch.ndim == 5:
        shape = (patch.shape[0], blocks(r"backbone\.0\.body\.layers\.2\.blocks\.(\d+)\."))
        if shape not in _VIDEO_SWIN:
            raise CheckpointError(f"unknown Video-Swin size (embed dim {shape[0]}, {shape[1]} blocks in stage 3); "
                                  "expected the released T (96, 6), S (96, 18) or B (128, 18)")
        return _VIDEO_SWIN[shape]
    if "backbone.0.body.patch_embed4.weight" in official:
        return "convmae-b"
    if any(k.startswith("backbone.0.body.stages.") and k.endswith(".gamma") for k in official):
        return "convnext-l"
    sample = sorted(k for k in official if k.startswith("backbone."))[:2]
    raise CheckpointError("this checkpoint's backbone is none of the released MUTR backbones (ResNet-50/101, Swin-L, "
                          f"Video-Swin-T/S/B, ConvNeXt-L, ConvMAE-B; its first backbone keys: {sample or 'none'})")


def infer_preset(official: dict[str, Tensor]) -> MUTRConfig:
    """The preset an official state_dict fits: backbone, box refinement and class count."""
    config = MUTRConfig.preset(official_backbone_preset(official))
    refine = any(k.startswith(ALIAS_PREFIX) for k in official)
    classes = official["class_embed.0.weight"].shape[0] if "class_embed.0.weight" in official else 1
    return replace(config, heads=replace(config.heads, with_box_refine=refine, num_classes=classes))


def _convert_backbone(kind: str, official: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official ``backbone.0.*`` tensors -> mutr's ``backbone.*``: by the rename table for the
    ResNets (transformers' ResNetBackbone), by the backbone family's own converter otherwise."""
    from mutr.model.backbone import family

    own = family(kind)
    if own is None:
        return {official_to_mutr_key(k): v for k, v in official.items()}
    sub = {k[len("backbone.0."):]: v for k, v in official.items()}
    return {"backbone." + k: v for k, v in own.convert_official(sub).items()}


def convert_state_dict(official: dict[str, Tensor], config: MUTRConfig | str | None = None) -> tuple[dict[str, Tensor], MUTRConfig]:
    """Official state_dict -> (mutr state_dict, config). Every official key must be used.

    ``config`` (a preset name or config) overrides the inferred preset; box refinement and the
    class count are always read from the keys.
    """
    try:
        fitting: MUTRConfig | None = infer_preset(official)
    except CheckpointError:
        if config is None:
            raise
        fitting = None
    if config is None:
        config = fitting
    if isinstance(config, str):
        config = MUTRConfig.preset(config)
    refine = any(k.startswith(ALIAS_PREFIX) for k in official)
    classes = official["class_embed.0.weight"].shape[0] if "class_embed.0.weight" in official else 1
    config = replace(config, heads=replace(config.heads, with_box_refine=refine, num_classes=classes))
    hint = (f" (it fits preset {fitting.name!r}: pass --preset {fitting.name})"
            if fitting is not None and fitting.name != config.name else "")
    out: dict[str, Tensor] = {}
    backbone = {k: v for k, v in official.items() if k.startswith("backbone.0.") and not _DROP.search(k)}
    try:
        out.update(_convert_backbone(config.backbone.kind, backbone))
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint does not fit preset {config.name!r}{hint}; {exc}") from None
    for key, value in official.items():
        if _DROP.search(key) or key in backbone:
            continue
        if key.startswith(ALIAS_PREFIX):
            twin = key[len("transformer.decoder."):]
            if twin not in official or not (official[twin] is value or torch.equal(official[twin], value)):
                raise CheckpointError(f"{key} should equal {twin} (the same module in the official model) but "
                                      "does not; the checkpoint is corrupt")
            continue
        out[official_to_mutr_key(key)] = value
    from mutr.model.mutr import MUTR

    with torch.device("meta"):
        expected = MUTR(config).state_dict()
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    wrong = [k for k in expected if k in out and tuple(out[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = [f"{label}: {show(v)}" for label, v in (("missing", missing), ("unexpected", unexpected),
                                                         ("wrong shape", wrong)) if v]
        raise CheckpointError(f"checkpoint does not fit preset {config.name!r}{hint}; " + "; ".join(parts))
    return out, config


def convert_checkpoint(src: str | Path, out_dir: str | Path, preset: str | None = None,
                       overwrite: bool = False) -> Path:
    """``mutr convert``: official .pth -> ``out_dir/config.json`` + ``model.safetensors``."""
    from mutr.errors import OutputExistsError
    from mutr.model.mutr import MUTR

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not overwrite:
        raise OutputExistsError(f"{out / 'model.safetensors'} exists; pass --overwrite to replace it")
    state, config = convert_state_dict(load_official_checkpoint(src), preset)
    model = MUTR(config)
    model.load_state_dict_checked(state)
    return model.save_pretrained(out)
