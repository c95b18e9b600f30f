"""Training configuration: dataclasses with a default and a comment for every field.

A recipe is YAML loaded onto ``TrainConfig``; ``--set a.b=c`` overrides any field (the value is
parsed as YAML, so ``--set optim.lr_drop=[8,10]`` and ``--set run.tensorboard=true`` work; list
items are addressed by index, ``data.train.0.root=/data/ytvos``). An unknown key is an error
naming the closest valid key. The resolved config is written into the run folder, so a run is
reproducible from it.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mutr.errors import ConfigError


@dataclass
class ModelSection:
    # MUTRConfig preset to build (see `MUTRConfig.preset_names()`): tiny-joint, r50-joint, r50, ...
    preset: str = "tiny-joint"
    # Nested MUTRConfig fields merged onto the preset, e.g. {audio_encoder: {freeze: true}}.
    overrides: dict = field(default_factory=dict)
    # Start from these weights (a `save_pretrained` folder or a registry name); None = preset init.
    init: str | None = None
    # Tokenizer for captions: None = the preset's (text_encoder.tokenizer); a folder, a
    # tokenizer.json or an HF id; "synthetic" = a word-level tokenizer of the synthetic vocabulary
    # (tiny presets have no pretrained tokenizer). Saved beside the exported model.
    tokenizer: str | None = None
    # Pretrained VGGish weights for the audio encoder when training from scratch (torchvggish
    # vggish-10086976.pth or torchaudio vggish.pt); None = keep the preset's (random) weights.
    audio_weights: str | None = None
    # Set every dropout probability to 0 (equivalence tests, debugging; not the official recipe).
    disable_dropout: bool = False
    # Strict load of `init` (False: keys that do not fit are reported and skipped, e.g. a text-only
    # checkpoint into a joint model).
    init_strict: bool = True


@dataclass
class DatasetSection:
    # Dataset kind: ref-youtube-vos, avsbench-s4, avsbench-ms3, ref-davis17 or synthetic.
    kind: str = "synthetic"
    # Dataset root folder (the layout of docs/datasets.md); ignored by synthetic.
    root: str = ""
    # Split to read: train, val, test (valid for Ref-YouTube-VOS).
    split: str = "train"
    # Name in logs and validation metrics; empty = kind (+ "-text"/"-audio" for synthetic).
    name: str = ""
    # Relative share of training clips drawn from this dataset (JointSampler ratios). All weights
    # 0 = proportional to the dataset sizes (the official uniform ConcatDataset).
    weight: float = 1.0
    # Augment this dataset (None = data.augment). AVSBench's own recipe trains without.
    augment: bool | None = None
    # Extra keyword arguments for the dataset class (subset rules, synthetic sizes, ...).
    options: dict = field(default_factory=dict)


@dataclass
class DataSection:
    # Training datasets, sampled jointly; a batch holds one reference modality (text or audio).
    train: list[DatasetSection] = field(default_factory=lambda: [DatasetSection()])
    # Held-out datasets for periodic validation (J, F / AVSBench mIoU, F-score); empty = none.
    val: list[DatasetSection] = field(default_factory=list)
    # Frames per training clip (official: 5).
    num_frames: int = 5
    # Clips per process per micro-batch (official: 2 per GPU, 8 GPUs).
    batch_size: int = 2
    # Clips in a row drawn from one dataset, hence one reference modality (0 = batch_size: each
    # batch is one modality). Smaller values (single process only) mix modalities in a step.
    group_size: int = 0
    # Training clips per epoch over all processes (0 = the datasets' total size).
    samples_per_epoch: int = 0
    # DataLoader worker processes per training process (0 = load in the main process).
    num_workers: int = 2
    # Short-side scales of the training augmentation (official: 288..512, max 640).
    scales: list[int] = field(default_factory=lambda: [288, 320, 352, 392, 416, 448, 480, 512])
    # Longest side after resizing.
    max_size: int = 640
    # The crop branch of the augmentation: resize to one of these, then crop a side in crop_range.
    crop_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_range: list[int] = field(default_factory=lambda: [384, 600])
    # Per-frame photometric distortion (brightness, contrast, saturation, hue, channel swap).
    photometric: bool = True
    # Use the official augmentation (flip, photometric, resize/crop); False = resize only.
    augment: bool = True
    # Short side of validation clips (official inference: 432; 0 = the stored size).
    val_size: int = 432
    # Cap on validation clips per dataset (0 = all); keeps periodic validation cheap.
    val_max_clips: int = 0


@dataclass
class OptimSection:
    # Main learning rate (transformer, heads, fusion, MTA, MTI, pixel decoder, audio resizer).
    lr: float = 1e-4
    # Visual backbone learning rate (official 6e-6; only layer2..4 are trainable).
    lr_backbone: float = 6e-6
    # RoBERTa learning rate (official 1e-5: the text encoder is fine-tuned in training).
    lr_text_encoder: float = 1e-5
    # Multiplier on lr for deformable attention's reference_points / sampling_offsets (official 1).
    lr_linear_proj_mult: float = 1.0
    # Learning rate of the audio encoder CNN (VGGish or small) when it is trainable; None = lr.
    lr_audio_encoder: float | None = None
    # AdamW weight decay, on every group (official 5e-4).
    weight_decay: float = 5e-4
    # Gradient clipping max L2 norm (official 0.1); 0 = no clipping.
    clip_max_norm: float = 0.1
    # Training length in epochs of the joint sampler (official 12).
    epochs: float = 12
    # Stop after this many optimizer steps instead (0 = use epochs).
    max_steps: int = 0
    # Epochs at which the LR is multiplied by lr_gamma (official [8, 10]); fractions allowed.
    lr_drop: list[float] = field(default_factory=lambda: [8, 10])
    # Same in optimizer steps; when non-empty it replaces lr_drop.
    lr_drop_steps: list[int] = field(default_factory=list)
    # MultiStepLR factor (official 0.1).
    lr_gamma: float = 0.1
    # Linear warm-up steps from warmup_factor x lr (official: none).
    warmup_steps: int = 0
    # Starting LR factor of the warm-up.
    warmup_factor: float = 0.001
    # Micro-batches per optimizer step (gradient accumulation); the global batch is
    # batch_size x processes x accumulate.
    accumulate: int = 1
    # Arithmetic: fp32, or fp16 / bf16 autocast (CUDA only; CPU always runs fp32).
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


@dataclass
class LossSection:
    # Loss weights (official: ce 2, bbox 5, giou 2, mask 2, dice 5), aux levels alike.
    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 2.0
    dice: float = 5.0
    # Matching cost weights (official: class 2, bbox 5, giou 2, mask 2, dice 5).
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0
    # Mask terms over the whole padded grid ("padded", official §19.5) or unpadded pixels only ("valid").
    mask_region: Literal["padded", "valid"] = "padded"
    # Losses on every earlier decoder level too (official: yes).
    aux_loss: bool = True
    # Mask terms (loss and matching cost) against the GT subsampled at [2::4] on the stride-4
    # prediction grid ("stride4", official §19.5) or at full resolution against the 4x-upsampled
    # logits that inference thresholds ("full"; the official grid caps small objects' J, see
    # mutr/train/targets.py).
    mask_targets: Literal["stride4", "full"] = "stride4"


@dataclass
class RunSection:
    # Output folder (config, metrics.jsonl, curves, checkpoints, exported model); `--out` sets it.
    out_dir: str = "runs/mutr"
    # Base seed; process r uses seed + r (official 42).
    seed: int = 42
    # Device: auto (CUDA when available), cpu, cuda, cuda:N.
    device: str = "auto"
    # Write a metrics line every this many optimizer steps.
    log_every: int = 10
    # Save a checkpoint (training state + exported model + curves) every this many steps
    # (0 = once per epoch).
    checkpoint_every: int = 0
    # Numbered training-state copies to keep besides the latest (1 = latest only).
    keep_checkpoints: int = 1
    # Validate every this many optimizer steps (0 = at each checkpoint).
    val_every: int = 0
    # Also log to TensorBoard (needs the `tensorboard` package).
    tensorboard: bool = False
    # Deterministic algorithms (torch.use_deterministic_algorithms): slower; bit-identical resume on CPU
    # does not need it.
    deterministic: bool = False
    # torch intra-op threads per process (0 = torch's default). On a shared or oversubscribed
    # CPU, 1 can be several times faster than 2.
    threads: int = 0
    # Stop after this many minutes of training in this invocation (0 = no limit): the run
    # checkpoints and ends early, and a later `mutr train` resumes it.
    time_limit: float = 0


@dataclass
class TrainConfig:
    """A whole training recipe. ``TrainConfig.from_yaml(path, overrides=["a.b=c"])``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        data = _deepcopy(data or {})
        for item in overrides:
            apply_override(data, item)
        return build(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass --config with a YAML recipe (see configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, data, optim, loss, run)")
        return cls.from_dict(data, overrides)

    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        return TrainConfig.from_dict(self.to_dict(), overrides)


# ---------------------------------------------------------------------- loading
def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    full = f"{where}.{key}" if where else key
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    tip = f"; did you mean {(where + '.' if where else '') + hint[0]!r}?" if hint else \
        f"; valid keys here: {', '.join(valid)}"
    return ConfigError(f"unknown config key {full!r}{tip}")


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check_scalar(value: Any, kind: Any, path: str) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_scalar(value, option, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{path} cannot be {value!r}")
    if origin is Literal:
        if value not in get_args(kind):
            raise ConfigError(f"{path} must be one of {', '.join(map(str, get_args(kind)))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = get_args(kind) or (Any,)
        if isinstance(item, type) and is_dataclass(item):
            return [build(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        return [_check_scalar(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if kind is Any:
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a plain mapping, checking keys and simple types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    hints = _field_types(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), names, where)
        path = f"{where}.{key}" if where else key
        kind = hints[key]
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[key] = build(kind, value, path)
        else:
            kwargs[key] = _check_scalar(value, kind, path)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=2e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string (no dot): accept it as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() not in ("", ".") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_override(data: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a plain nested mapping, checking every key against ``TrainConfig``."""
    keys, value = parse_override(item)
    cls: Any = TrainConfig
    node: Any = data
    where = ""
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {item!r}: {where} has {len(node)} items; use an index 0..{len(node) - 1}")
            idx = int(key)
            if last:
                node[idx] = value
                return
            node = node[idx]
            where = f"{where}.{key}"
            continue
        if cls is dict:  # free-form mapping (model.overrides, options): no key checks
            if last:
                node[key] = value
                return
            node = node.setdefault(key, {})
            where = f"{where}.{key}"
            continue
        names = [f.name for f in fields(cls)]
        if key not in names:
            raise _unknown(key, names, where)
        kind = _field_types(cls)[key]
        where = f"{where}.{key}" if where else key
        if last:
            node[key] = value
            return
        if isinstance(kind, type) and is_dataclass(kind):
            node = node.setdefault(key, {})
            cls = kind
        elif get_origin(kind) is list:
            (item_kind,) = get_args(kind)
            if key not in node:
                node[key] = [asdict(v) if is_dataclass(v) else v
                             for v in getattr(_default_of(cls), key)]
            node = node[key]
            cls = item_kind
        elif kind is dict:
            node = node.setdefault(key, {})
            cls = dict
        else:
            raise ConfigError(f"--set {item!r}: {where} is a value, not a section")


def _default_of(cls: type) -> Any:
    return cls()


def resolve_model_config(section: ModelSection):
    """The MUTRConfig a run builds: the preset with ``overrides`` merged in."""
    from mutr.config import MUTRConfig

    base = MUTRConfig.preset(section.preset).to_dict()
    if section.overrides:
        base = _merge(base, section.overrides)
    return MUTRConfig.from_dict(base)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


__all__ = ["TrainConfig", "ModelSection", "DatasetSection", "DataSection", "OptimSection", "LossSection",
           "RunSection", "resolve_model_config", "parse_override", "apply_override"]
