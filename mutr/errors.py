"""Typed errors. The CLI prints ``str(error)`` as one line and exits 1; nothing else is caught.

Every message names the problem *and* the fix, because it is all a user sees.
"""

from __future__ import annotations


class MutrError(Exception):
    """Base of every error mutr raises on purpose."""


class ConfigError(MutrError, ValueError):
    """A configuration value or preset name is invalid."""


class InputError(MutrError, ValueError):
    """A tensor, file or prompt given by the caller is unusable."""


class CheckpointError(MutrError, ValueError):
    """Weights cannot be loaded: missing/unexpected keys, wrong preset, unsafe pickle, bad file."""


class DownloadError(MutrError):
    """A download failed: network, hash mismatch, unknown registry name."""


class MediaError(MutrError, ValueError):
    """A video, image or audio file cannot be decoded or written."""


class OutputExistsError(MutrError):
    """An output already exists and ``overwrite`` was not given."""


class MissingExtraError(MutrError, ImportError):
    """An optional dependency (an extra such as ``mutr[app]``) is not installed."""
