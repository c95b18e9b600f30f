"""Mixing datasets with chosen ratios, reproducibly, with an exact resume point.

The official recipe trains on a ConcatDataset (RefCOCO pseudo-videos + Ref-YouTube-VOS) sampled
uniformly; MUTR's joint text+audio training needs chosen proportions instead. Here an epoch is
a *plan*: ``num_samples`` keys ``(dataset, index, seed)`` computed from (seed, epoch) alone. The
per-sample seed drives clip sampling and augmentation inside the dataset, so a key names one
exact sample, and a sampler state ``{epoch, position}`` resumes a run bit-identically, however
many DataLoader workers run.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from mutr.data.common import ClipSample, Seed
from mutr.errors import InputError

Key = tuple[int, int, int]  # (dataset number, index in that dataset, sample seed)


class JointDataset(Dataset):
    """Datasets behind one key space. ``dataset[(d, i, seed)]`` is sample i of dataset d drawn
    with ``seed``; a plain int indexes the concatenation (ConcatDataset order, fixed seed)."""

    def __init__(self, datasets: Sequence[Dataset] | Mapping[str, Dataset]) -> None:
        items = list(datasets.items()) if isinstance(datasets, Mapping) else \
            [(getattr(d, "name", f"dataset{i}"), d) for i, d in enumerate(datasets)]
        if not items:
            raise InputError("JointDataset needs at least one dataset")
        for name, d in items:
            if not callable(getattr(d, "get", None)):
                raise InputError(f"dataset {name!r} has no get(index, seed) method; wrap it in a mutr.data dataset")
        self.names = [n for n, _ in items]
        self.datasets = [d for _, d in items]
        self.sizes = [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: int | Key) -> ClipSample:
        if isinstance(key, tuple):
            d, index, seed = key
            return self.datasets[d].get(index, seed)
        offsets = np.cumsum(self.sizes)
        d = int(np.searchsorted(offsets, key, side="right"))
        index = key - (int(offsets[d - 1]) if d else 0)
        return self.datasets[d].get(index, [0, d, index])

    def get(self, index: int, seed: Seed) -> ClipSample:
        offsets = np.cumsum(self.sizes)
        d = int(np.searchsorted(offsets, index, side="right"))
        return self.datasets[d].get(index - (int(offsets[d - 1]) if d else 0), seed)


class JointSampler(Sampler[Key]):
    """Keys ``(dataset, index, seed)`` for a :class:`JointDataset`, ``num_samples`` per epoch.

    * ``ratios``: relative frequency of each dataset (default: proportional to sizes, i.e. the
      official uniform ConcatDataset); within a dataset, indices follow fresh permutations, so
      every sample is seen before any repeats.
    * ``group_size``: consecutive runs of this many keys come from one dataset; set it to the
      batch size so no batch mixes text and audio references.
    * ``rank``/``world_size``: groups are dealt round-robin to processes; every rank gets the
      same count (the plan is rounded up).
    * Resume: ``state_dict()`` → ``{"epoch", "position", ...}``. With a prefetching DataLoader
      the sampler runs ahead of training, so pass ``state_dict(position=samples_consumed)``.
    """

    def __init__(self, sizes: Sequence[int] | JointDataset, ratios: Sequence[float] | None = None, *,
                 num_samples: int | None = None, seed: int = 0, group_size: int = 1,
                 rank: int = 0, world_size: int = 1) -> None:
        self.sizes = list(sizes.sizes if isinstance(sizes, JointDataset) else sizes)
        weights = np.asarray(self.sizes if ratios is None else ratios, dtype=np.float64)
        if len(weights) != len(self.sizes) or (weights < 0).any() or weights.sum() <= 0:
            raise InputError(f"ratios {list(weights)} must be one non-negative number per dataset "
                             f"({len(self.sizes)}) with a positive sum")
        empty = [i for i, (s, r) in enumerate(zip(self.sizes, weights)) if s == 0 and r > 0]
        if empty:
            raise InputError(f"dataset {empty[0]} is empty but has ratio {weights[empty[0]]}; give it ratio 0")
        if group_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"need group_size >= 1 and 0 <= rank < world_size, got {group_size}, {rank}, {world_size}")
        self.probs = weights / weights.sum()
        self.seed, self.group_size, self.rank, self.world_size = seed, group_size, rank, world_size
        chunk = group_size * world_size
        self.num_samples = math.ceil((num_samples or sum(self.sizes)) / chunk) * chunk  # whole epoch, all ranks
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, np.ndarray] | None = None

    def plan(self, epoch: int) -> np.ndarray:
        """[num_samples, 3] int64 keys of ``epoch`` for all ranks, a pure function of (seed, epoch)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups = rng.choice(len(self.sizes), size=self.num_samples // self.group_size, p=self.probs)
        which = np.repeat(groups, self.group_size)
        index = np.zeros(self.num_samples, dtype=np.int64)
        for d in range(len(self.sizes)):
            where = np.flatnonzero(which == d)
            if len(where):
                perm_rng = np.random.default_rng([self.seed, epoch, d + 1])
                reps = -(-len(where) // self.sizes[d])
                index[where] = np.concatenate([perm_rng.permutation(self.sizes[d]) for _ in range(reps)])[:len(where)]
        seeds = rng.integers(0, 2**62, size=self.num_samples)
        keys = np.stack([which, index, seeds], axis=1).astype(np.int64)
        self._plan = (epoch, keys)
        return keys

    def keys(self, epoch: int) -> np.ndarray:
        """This rank's keys of ``epoch`` (every ``world_size``-th group, starting at ``rank``)."""
        g = self.plan(epoch).reshape(-1, self.group_size, 3)
        return g[self.rank::self.world_size].reshape(-1, 3)

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[Key]:
        keys = self.keys(self.epoch)
        while self.position < len(keys):
            d, i, s = keys[self.position]
            self.position += 1
            yield int(d), int(i), int(s)
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a no-op for the current epoch, so a resumed
        position survives the usual ``set_epoch`` call at the top of the loop)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position if position is None else position,
                "sizes": list(self.sizes), "probs": self.probs.tolist(), "num_samples": self.num_samples,
                "group_size": self.group_size, "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``'s epoch and position; refuses a state of a different data mix."""
        for k in ("seed", "sizes", "num_samples", "group_size", "world_size"):
            if k in state and state[k] != self.state_dict()[k]:
                raise InputError(f"sampler state has {k}={state[k]} but this sampler has {self.state_dict()[k]}; "
                                 "resume with the same datasets and sampler settings")
        if "probs" in state and not np.allclose(state["probs"], self.probs):
            raise InputError("sampler state was saved with other ratios; resume with the same ratios")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
