"""mutr: text- and audio-referred video object segmentation (MUTR, AAAI 2024) in pure PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Heavy imports (torch, transformers) are deferred so that `mutr --help` stays fast.
_LAZY = {
    "MUTR": "mutr.model.mutr",
    "MUTROutput": "mutr.model.mutr",
    "VisualFeatures": "mutr.model.mutr",
    "MUTRConfig": "mutr.config",
    "ReferenceTokens": "mutr.model.reference",
    "Predictor": "mutr.predictor",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from mutr.config import MUTRConfig
    from mutr.model.mutr import MUTR, MUTROutput
    from mutr.model.reference import ReferenceTokens
    from mutr.predictor import Predictor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mutr' has no attribute {name!r}")
