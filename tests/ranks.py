"""Run a function as N torch.distributed processes with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), forked from the test process so nothing is imported again (a
real ``torchrun`` costs ~10 s of start-up per test on two cores; one test does it, marked slow).

Each child runs with one PyTorch thread (as torchrun sets OMP_NUM_THREADS=1), which also keeps
the fork safe: OpenMP's thread pool is never used in the child.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable[[], Any], rank: int, size: int, port: int, results) -> None:
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        results.put((rank, "ok", fn()))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(fn: Callable[[], Any], size: int = 2, timeout: float = 120) -> list[Any]:
    """``fn()`` in ``size`` forked processes that form one gloo process group; their results in
    rank order (an exception in a child fails with its traceback)."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, size, port, results)) for r in range(size)]
    for p in procs:
        p.start()
    try:
        got = dict()
        for _ in procs:
            rank, kind, value = results.get(timeout=timeout)
            if kind == "error":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            got[rank] = value
        return [got[r] for r in range(size)]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
