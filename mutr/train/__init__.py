"""Training: matcher, losses, optimizer, checkpoints and the loop (``Trainer``).

Heavy modules load lazily so ``import mutr.train`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "TrainConfig": "mutr.train.config",
    "Trainer": "mutr.train.trainer",
    "TrainEvent": "mutr.train.trainer",
    "TrainResult": "mutr.train.trainer",
    "TrainingDiverged": "mutr.train.trainer",
    "train": "mutr.train.trainer",
    "ReferringMatcher": "mutr.train.matcher",
    "SetCriterion": "mutr.train.losses",
    "prepare_targets": "mutr.train.targets",
    "BatchTargets": "mutr.train.targets",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from mutr.train.config import TrainConfig
    from mutr.train.losses import SetCriterion
    from mutr.train.matcher import ReferringMatcher
    from mutr.train.targets import BatchTargets, prepare_targets
    from mutr.train.trainer import TrainEvent, Trainer, TrainingDiverged, TrainResult, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mutr.train' has no attribute {name!r}")
