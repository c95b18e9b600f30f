"""From the ``data`` section of a recipe to datasets, the joint sampler and batches.

Modality grouping: the model takes one kind of reference per call, so the
``JointSampler(group_size=...)`` deals runs of ``group_size`` keys from one dataset, and
``collate_by_modality`` turns a process's batch into one ``ClipBatch`` per modality (in order
of first appearance). With ``group_size == batch_size`` (the default) every batch is one
modality and one forward pass; a smaller group (single process only) mixes text and audio in a
step through several forward passes whose losses share one normaliser.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from torch.utils.data import Dataset

from mutr.errors import ConfigError
from mutr.train.config import DataSection, DatasetSection

KINDS = ("ref-youtube-vos", "ref-davis17", "avsbench-s4", "avsbench-ms3", "synthetic")


class ExpressionSubset(Dataset):
    """The joint-training subset of a Ref-YouTube-VOS-style dataset (MUTR paper, "Joint Training"):
    keep ``expressions_per_video`` descriptions per video (the first exp ids in sorted order), then
    every ``keep_every``-th of the remaining clip instances (the even positions), e.g. ~10k of the
    72,920 training clips with (1, 2)."""

    def __init__(self, base: Any, *, expressions_per_video: int = 1, keep_every: int = 2) -> None:
        if expressions_per_video < 1 or keep_every < 1:
            raise ConfigError("expressions_per_video and keep_every must be >= 1")
        self.base = base
        self.name = getattr(base, "name", "subset")
        chosen: dict[str, set[str]] = {}
        for meta in base.metas:
            chosen.setdefault(meta.video, set())
        for video in chosen:
            exps = sorted({m.exp_id for m in base.metas if m.video == video}, key=_exp_key)
            chosen[video] = set(exps[:expressions_per_video])
        kept = [i for i, m in enumerate(base.metas) if m.exp_id in chosen[m.video]]
        self.indices = kept[::keep_every]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, [0, key])
        return self.get(index, seed)

    def get(self, index: int, seed):
        return self.base.get(self.indices[index], seed)


def _exp_key(exp_id: str) -> tuple[int, str]:
    return (int(exp_id), exp_id) if str(exp_id).isdigit() else (1 << 30, str(exp_id))


def make_transforms(data: DataSection, augment: bool, train: bool):
    from mutr.data import video_transforms as vt

    if train and augment:
        return vt.train_transforms(data.scales, data.max_size, crop_scales=data.crop_scales,
                                   crop_range=tuple(data.crop_range), photometric=data.photometric)
    if not train and data.val_size > 0:
        return vt.Compose([vt.RandomResize([data.val_size]), vt.Check(), vt.ToTensorNormalize()])
    return vt.plain_transforms()


def build_dataset(section: DatasetSection, data: DataSection, *, seed: int, train: bool = True) -> Dataset:
    """One dataset of ``section.kind`` with the recipe's transforms; ``options`` go to its class."""
    import mutr.data as md

    if section.kind not in KINDS:
        raise ConfigError(f"unknown dataset kind {section.kind!r}; choose one of {', '.join(KINDS)}")
    augment = data.augment if section.augment is None else section.augment
    transforms = make_transforms(data, augment, train)
    options = dict(section.options)
    subset = options.pop("subset", None)
    if section.kind in ("ref-youtube-vos", "ref-davis17"):
        cls = md.RefYouTubeVOS if section.kind == "ref-youtube-vos" else md.RefDavis
        kwargs = dict(num_frames=data.num_frames, transforms=transforms, seed=seed)
        ds = _construct(cls, section, (section.root, section.split), kwargs, options)
        if subset is not None:
            if not isinstance(subset, dict):
                raise ConfigError(f"{section.kind} options.subset must be a mapping like "
                                  "{expressions_per_video: 1, keep_every: 2}")
            ds = ExpressionSubset(ds, **subset)
        return ds
    if subset is not None:
        raise ConfigError(f"options.subset is only for ref-youtube-vos / ref-davis17, not {section.kind}")
    if section.kind in ("avsbench-s4", "avsbench-ms3"):
        kwargs = dict(subset=section.kind.split("-")[1], split=section.split, transforms=transforms, seed=seed)
        return _construct(md.AVSBench, section, (section.root,), kwargs, options)
    kwargs = dict(num_frames=data.num_frames, transforms=transforms,
                  seed=seed if train else seed + 1_000_003)  # held-out clips differ from training ones
    return _construct(md.SyntheticDataset, section, (), kwargs, options)


def _construct(cls, section: DatasetSection, args: tuple, kwargs: dict, options: dict):
    params = inspect.signature(cls.__init__).parameters
    for key in options:
        if key not in params:
            valid = [p for p in params if p not in ("self", "root", "transforms")]
            raise ConfigError(f"{section.kind} has no option {key!r}; valid options: {', '.join(valid)}")
    return cls(*args, **{**kwargs, **options})


def build_train_data(data: DataSection, *, seed: int, rank: int = 0, world_size: int = 1):
    """(JointDataset, JointSampler) for this process."""
    from mutr.data import JointDataset, JointSampler

    if not data.train:
        raise ConfigError("data.train is empty; list at least one dataset")
    if data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {data.batch_size}")
    group = data.group_size or data.batch_size
    if data.batch_size % group:
        raise ConfigError(f"data.batch_size ({data.batch_size}) must be a multiple of data.group_size ({group})")
    if world_size > 1 and group != data.batch_size:
        raise ConfigError("with several processes each process's batch must be one modality: "
                          "set data.group_size equal to data.batch_size")
    names = _unique_names(data.train)
    datasets = {n: build_dataset(s, data, seed=seed, train=True) for n, s in zip(names, data.train)}
    joint = JointDataset(datasets)
    weights = [s.weight for s in data.train]
    ratios = None if all(w == 0 for w in weights) else weights  # None: proportional to sizes
    sampler = JointSampler(joint, ratios, num_samples=data.samples_per_epoch or None,
                           seed=seed, group_size=group, rank=rank, world_size=world_size)
    return joint, sampler


def build_val_data(data: DataSection, *, seed: int) -> list[tuple[str, Dataset]]:
    names = _unique_names(data.val)
    return [(n, build_dataset(s, data, seed=seed, train=False)) for n, s in zip(names, data.val)]


def _unique_names(sections: Sequence[DatasetSection]) -> list[str]:
    names: list[str] = []
    for s in sections:
        base = s.name or s.kind + (f"-{s.options['reference']}" if "reference" in s.options else "")
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def val_samples(dataset: Dataset, limit: int, seed: int):
    """Deterministic held-out samples: index i drawn with seed [seed, i]."""
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    return (dataset.get(i, [seed, i]) for i in range(n))


def collate_by_modality(samples: Sequence[Any]) -> list[Any]:
    """Pad (to a multiple of 32) and split a process's samples into one ``ClipBatch`` per modality."""
    from mutr.data import collate

    groups: dict[bool, list[Any]] = {}
    for s in samples:
        groups.setdefault(s.caption is not None, []).append(s)
    return [collate(g) for g in groups.values()]
