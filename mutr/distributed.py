"""Sharing work between processes: torchrun ranks, job-array shards, size-balanced shares.

Two ways to split a list of items (videos, benchmark videos) over workers, which compose:

* **torchrun** (``torchrun --nproc_per_node N "$(which mutr)" segment ...``): each process reads
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment, :func:`init` joins the process
  group (NCCL on CUDA, gloo on CPU) and picks ``cuda:LOCAL_RANK``. Several machines are
  torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here depends on it.
* **job arrays** (``--shard I/N``, SLURM ``$SLURM_ARRAY_TASK_ID``, Kubernetes indexed jobs):
  independent processes that never talk to each other, each taking share I of N.

Both together give ``N * WORLD_SIZE`` shares; shard I, rank r takes share ``I * WORLD_SIZE + r``.

Shares are balanced by size, not by name: :func:`balanced_shares` is the longest-processing-time
rule (items in decreasing size, each to the share with the least total so far; ties by position),
so the slowest share carries at most 4/3 of the optimum, and every process computes the same
shares from the same sizes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mutr.errors import ConfigError, InputError, MutrError

__all__ = ["Shard", "World", "balanced_shares", "init", "parse_shard", "run_on_main"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` (0-based), as given by ``--shard I/N``."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str | None) -> Shard:
    """"I/N" with 0 <= I < N -> Shard(I, N); None -> the whole job."""
    if value is None:
        return Shard()
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m:
        raise InputError(f"--shard {value!r} is not I/N: pass e.g. --shard 0/4 (share 0 of 4, counted from 0)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise InputError(f"--shard {value}: I must be between 0 and N-1 = {count - 1} (shares are counted from 0): "
                         f"pass --shard 0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)}")
    return Shard(index, count)


@dataclass(frozen=True)
class World:
    """This process among the others: ``rank`` of ``size`` torchrun processes and its ``device``;
    ``shard`` the job-array share it belongs to."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    shard: Shard = Shard()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def share(self) -> int:
        """This process's share among :attr:`shares`."""
        return self.shard.index * self.size + self.rank

    @property
    def shares(self) -> int:
        return self.shard.count * self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order (pickled; fine for small records)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def init(device: str = "auto", shard: Shard = Shard(), *, timeout_minutes: float = 60) -> World:
    """Read torchrun's environment, join the process group when there are several processes,
    and choose the device: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` where CUDA is."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}: pass --device auto, cpu or cuda") from None
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but CUDA is not available: pass --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU (this machine has {torch.cuda.device_count()}): "
                              "start at most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes))
    if dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
    return World(rank, size, local, dev, shard)


def close(world: World) -> None:
    """Leave the process group (after the last collective)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def balanced_shares(sizes: Sequence[float], count: int) -> list[list[int]]:
    """Split item positions into ``count`` shares of near-equal total size (LPT rule; each share
    keeps its items in input order). Deterministic: the same sizes give the same shares."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    totals = [0.0] * count
    shares: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        k = min(range(count), key=lambda s: (totals[s], s))
        shares[k].append(i)
        totals[k] += sizes[i]
    return [sorted(s) for s in shares]


def run_on_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only (set-up that writes files); the others wait and get its result,
    or raise the same :class:`MutrError` so every process stops with the same one line."""
    if not world.distributed:
        return fn()
    payload: list[Any] = [None]
    if world.is_main:
        try:
            payload[0] = ("ok", fn())
        except MutrError as e:
            payload[0] = ("error", e)
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value
