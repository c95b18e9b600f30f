"""Model configuration: frozen dataclasses with named presets, stored beside the weights.

A checkpoint directory holds ``config.json`` (this dataclass tree) next to ``model.safetensors``,
so a checkpoint rebuilds its own model. Presets name the paper's variants; ``r50`` is the
configuration of the released checkpoints (box refinement, binary class head, frozen RoBERTa).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_type_hints

from mutr.errors import ConfigError


@dataclass(frozen=True)
class BackboneConfig:
    """Visual backbone: transformers' ``AutoBackbone`` (resnet, pvt_v2) or a backbone family of
    ``mutr.model.backbones`` (swin, convnext, ...); random weights by default."""

    kind: Literal["resnet", "swin", "convnext", "pvt_v2", "video_swin", "convmae"] = "resnet"
    # Keyword arguments of the transformers config class (ResNetConfig, SwinConfig, ...).
    params: dict = field(default_factory=dict)
    # Parameters whose name contains one of these stay trainable; empty = all trainable.
    # The official ResNet trains layer2..4 only (stem and layer1 frozen).
    trainable: tuple[str, ...] = ()
    # Pretrained weights for training from scratch; None = random init. AutoBackbone kinds: an HF
    # Hub id or directory. Family kinds: a registry name (`mutr download --list`, kind backbone) or
    # a local .pth in the official recipe's layout, loaded by the trainer (the model never reads it).
    pretrained: str | None = None


@dataclass(frozen=True)
class TextEncoderConfig:
    """RoBERTa text encoder; ``params`` are RobertaConfig keyword arguments."""

    kind: Literal["roberta", "none"] = "roberta"
    params: dict = field(default_factory=dict)
    freeze: bool = True
    # Tokenizer source: a local directory or an HF Hub id (read from the local cache only).
    tokenizer: str | None = "FacebookAI/roberta-base"
    # Pretrained RoBERTa weights for training from scratch (HF id or directory); None = random.
    pretrained: str | None = None
    max_length: int = 512


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Audio reference encoder on VGGish log-mel examples [N, 1, 96, 64]."""

    kind: Literal["none", "vggish", "small"] = "none"
    freeze: bool = True  # the AVSBench baseline keeps VGGish frozen
    embed_dim: int = 128


@dataclass(frozen=True)
class TransformerConfig:
    """Deformable encoder-decoder (per frame) and the multi-scale inputs around it."""

    d_model: int = 256
    nheads: int = 8
    enc_layers: int = 4
    dec_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = 5
    input_proj_groups: int = 32  # GroupNorm groups of input_proj (official: 32)


@dataclass(frozen=True)
class FusionConfig:
    """Early fusion, MTA and the cross-modal FPN: the places vision meets the reference."""

    nheads: int = 8
    mta_ffn: int = 2048
    fpn_groups: int = 8  # GroupNorm groups in the pixel decoder (official: 8)
    fpn_sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    fpn_ffn: int = 2048
    fpn_dropout: float = 0.1


@dataclass(frozen=True)
class MTIConfig:
    """Multi-object temporal interaction (windowed temporal encoder + video-query decoder)."""

    window_size: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.2


@dataclass(frozen=True)
class HeadsConfig:
    num_classes: int = 1  # the released checkpoints use the binary head
    with_box_refine: bool = True
    mask_dim: int = 256
    controller_layers: int = 3
    dynamic_mask_channels: int = 8
    rel_coord: bool = True


@dataclass(frozen=True)
class MUTRConfig:
    """Everything needed to build a MUTR model. Use ``MUTRConfig.preset(name)``."""

    name: str = "r50"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    mti: MTIConfig = field(default_factory=MTIConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    # ------------------------------------------------------------------ presets
    @staticmethod
    def preset_names() -> list[str]:
        return sorted(_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MUTRConfig":
        if name not in _PRESETS:
            hint = difflib.get_close_matches(name, _PRESETS, n=1)
            tip = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(
                f"unknown preset {name!r}; {tip}choose one of: {', '.join(sorted(_PRESETS))}"
            )
        config = _PRESETS[name]()
        return replace(config, **overrides) if overrides else config

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MUTRConfig":
        return _from_plain(cls, data, "")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "MUTRConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "MUTRConfig":
        import yaml

        text = path_or_text
        if isinstance(path_or_text, Path) or (
            isinstance(path_or_text, str) and "\n" not in path_or_text and Path(path_or_text).exists()
        ):
            text = Path(path_or_text).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError("a MUTR config YAML must be a mapping of fields; got a " + type(data).__name__)
        if "preset" in data:  # allow `preset: r50` plus overrides
            base = cls.preset(data.pop("preset")).to_dict()
            data = _deep_merge(base, data)
        return cls.from_dict(data)


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _from_plain(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            tip = f"; did you mean {(where + '.' if where else '') + hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown config key {(where + '.' if where else '') + key!r}{tip}")
        kind = hints[key]
        path = f"{where}.{key}" if where else key
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[key] = _from_plain(kind, value, path)
        elif str(kind).startswith("tuple") and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------- presets
_RESNET50 = dict(
    layer_type="bottleneck",
    embedding_size=64,
    hidden_sizes=[256, 512, 1024, 2048],
    depths=[3, 4, 6, 3],
    downsample_in_first_stage=False,
    downsample_in_bottleneck=False,  # v1.5: the stride sits on the 3x3 conv, as torchvision
)
_ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
_RESNET_TRAINABLE = ("stages.1.", "stages.2.", "stages.3.")  # = torchvision layer2..layer4


def _r50() -> MUTRConfig:
    return MUTRConfig(
        name="r50",
        backbone=BackboneConfig("resnet", dict(_RESNET50), _RESNET_TRAINABLE),
        text_encoder=TextEncoderConfig("roberta", dict(_ROBERTA_BASE)),
    )


def _r101() -> MUTRConfig:
    params = dict(_RESNET50, depths=[3, 4, 23, 3])
    return replace(_r50(), name="r101", backbone=BackboneConfig("resnet", params, _RESNET_TRAINABLE))


def _swin_l() -> MUTRConfig:
    # the official swin_l_p4w7: SwinConfig keyword arguments (mutr.model.backbones.swin)
    params = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=7,
                  drop_path_rate=0.3)
    return replace(_r50(), name="swin-l", backbone=BackboneConfig("swin", params))


def _video_swin(name: str, embed_dim: int, depths: list[int], num_heads: list[int]) -> MUTRConfig:
    """Video-Swin-T/S/B as the released MUTR uses it (mutr.model.backbones.video_swin): 1x4x4
    patches, (8, 7, 7) windows, drop path 0.2."""
    params = dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, drop_path_rate=0.2)
    return replace(_r50(), name=name, backbone=BackboneConfig("video_swin", params))


def _convnext_l() -> MUTRConfig:
    # the official convnext_large: ConvNextConfig keyword arguments (mutr.model.backbones.convnext)
    params = dict(depths=[3, 3, 27, 3], hidden_sizes=[192, 384, 768, 1536], drop_path_rate=0.5)
    return replace(_r50(), name="convnext-l", backbone=BackboneConfig("convnext", params))


def _convmae_b() -> MUTRConfig:
    """ConvMAE-B as released: official ``--max_size 640`` (sizes the global blocks' relative
    positions: 79 rows), drop path 0.2; mutr.model.backbones.convmae."""
    return replace(_r50(), name="convmae-b",
                   backbone=BackboneConfig("convmae", dict(max_size=640, drop_path_rate=0.2)))


def _pvtv2_b5() -> MUTRConfig:
    params = dict(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], num_attention_heads=[1, 2, 5, 8],
                  mlp_ratios=[4, 4, 4, 4], sr_ratios=[8, 4, 2, 1], drop_path_rate=0.3)
    return replace(_r50(), name="pvtv2-b5", backbone=BackboneConfig("pvt_v2", params))


def _tiny() -> MUTRConfig:
    """A few hundred thousand parameters; same code paths as r50 (box refine, binary, MTI shift)."""
    return MUTRConfig(
        name="tiny",
        backbone=BackboneConfig(
            "resnet",
            dict(_RESNET50, embedding_size=8, hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1]),
            ("stages.1.", "stages.2.", "stages.3."),
        ),
        text_encoder=TextEncoderConfig(
            "roberta",
            dict(_ROBERTA_BASE, vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=66),
            freeze=False,
            tokenizer=None,
            max_length=64,
        ),
        transformer=TransformerConfig(d_model=32, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=64,
                                      num_queries=5, input_proj_groups=8),
        fusion=FusionConfig(nheads=4, mta_ffn=64, fpn_groups=4, fpn_ffn=64),
        mti=MTIConfig(window_size=4, enc_layers=2, dec_layers=2, nheads=4, dim_feedforward=64),
        heads=HeadsConfig(mask_dim=32, controller_layers=3, dynamic_mask_channels=8),
    )


def _with_audio(base: MUTRConfig, name: str, kind: str, text: bool) -> MUTRConfig:
    text_cfg = base.text_encoder if text else replace(base.text_encoder, kind="none", tokenizer=None)
    return replace(base, name=name, text_encoder=text_cfg,
                   audio_encoder=AudioEncoderConfig(kind=kind, freeze=(kind == "vggish")))


_PRESETS = {
    "r50": _r50,
    "r101": _r101,
    "swin-l": _swin_l,
    "video-swin-t": lambda: _video_swin("video-swin-t", 96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "video-swin-s": lambda: _video_swin("video-swin-s", 96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "video-swin-b": lambda: _video_swin("video-swin-b", 128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "convnext-l": _convnext_l,
    "convmae-b": _convmae_b,
    "pvtv2-b5": _pvtv2_b5,
    "tiny": _tiny,
    "r50-audio": lambda: _with_audio(_r50(), "r50-audio", "vggish", text=False),
    "r50-joint": lambda: _with_audio(_r50(), "r50-joint", "vggish", text=True),
    "tiny-joint": lambda: _with_audio(_tiny(), "tiny-joint", "small", text=True),
}

__all__ = [
    "MUTRConfig", "BackboneConfig", "TextEncoderConfig", "AudioEncoderConfig", "TransformerConfig",
    "FusionConfig", "MTIConfig", "HeadsConfig",
]
