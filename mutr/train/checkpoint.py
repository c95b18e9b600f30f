"""Full training state, written atomically and read back with ``torch.load(weights_only=True)``.

A state file holds everything a run needs to continue bit-identically: model, optimizer,
scheduler, grad scaler, the step, the data sampler's position and every RNG (Python, NumPy, torch
CPU and CUDA) of every process. Only tensors and plain Python values go in, so loading never
unpickles code. The model is also exported as ``config.json`` + ``model.safetensors``
(``MUTR.save_pretrained``), the form ``MUTR.from_pretrained`` and ``mutr segment`` read.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mutr.errors import CheckpointError
from mutr.files import atomic_write

STATE_NAME = "state.pt"
STATE_GLOB = "state-*.pt"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values."""
    version, keys, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: keep what we can
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


# ---------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file in the same folder, fsync, rename over ``path``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def training_state(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler | None, step: int, sampler: dict[str, Any],
                   rng: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict ``save_state`` writes. ``rng``: one ``rng_state()`` per process, by rank."""
    return {
        "format": FORMAT_VERSION,
        "step": int(step),
        "model": _cpu(model.state_dict()),
        "optimizer": _cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "sampler": sampler,
        "rng": rng,
        "extra": extra or {},
    }


def save_state(state: dict[str, Any], directory: Path, keep: int = 1) -> Path:
    """Write ``state.pt`` (the latest) and, when ``keep > 1``, a numbered copy ``state-<step>.pt``,
    pruning numbered copies beyond the ``keep`` newest."""
    directory = Path(directory)
    latest = directory / STATE_NAME
    atomic_torch_save(state, latest)
    if keep > 1:
        atomic_torch_save(state, directory / f"state-{state['step']:08d}.pt")
        numbered = sorted(directory.glob(STATE_GLOB), key=_step_of)
        for old in numbered[:-keep]:
            old.unlink(missing_ok=True)
    return latest


def _step_of(path: Path) -> int:
    m = re.search(r"state-(\d+)\.pt$", path.name)
    return int(m.group(1)) if m else -1


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state file safely (``weights_only=True``); a folder means its ``state.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}; start without --resume, or point it at a run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise CheckpointError(f"cannot read {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}; "
                              "the file is damaged or not a mutr training state") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a mutr training state (format {FORMAT_VERSION})")
    return state


def export_model(model: torch.nn.Module, directory: Path) -> Path:
    """``config.json`` + ``model.safetensors`` for ``MUTR.from_pretrained``."""
    return model.save_pretrained(directory)
