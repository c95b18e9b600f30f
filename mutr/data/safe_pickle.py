"""Reading AVSBench's ``audio_log_mel/*.pkl`` without running code from the file.

The AVSBench preprocessing wrote each file with ``pickle.dump(tensor)``: a torch tensor, which
pickle stores as ``torch._utils._rebuild_tensor_v2`` over ``torch.storage._load_from_bytes``
(a nested legacy ``torch.save`` of the storage) plus an empty ``collections.OrderedDict`` of
hooks; protocol 2 adds ``_codecs.encode`` for bytes. ``pickle.load`` would call whatever a file
names, so :class:`RestrictedUnpickler` resolves only those names (and the ones a NumPy array
needs) to checked stand-ins, loads the nested storage with ``torch.load(weights_only=True)``,
and refuses every other global with a one-line error.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mutr.errors import MediaError


class UnsafePickleError(MediaError):
    """A pickle asked for a global outside the allow-list (it could run code)."""


def _refuse_object_dtype(d: np.dtype) -> np.dtype:
    if d.hasobject:
        raise UnsafePickleError("the pickle holds a NumPy object array (it can hold arbitrary objects)")
    return d


def _reconstruct(cls: Any, *args: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"the pickle rebuilds a {cls!r}, not a plain numpy.ndarray")
    multiarray = getattr(np, "_core", None) or np.core
    return multiarray.multiarray._reconstruct(cls, *args)


def _dtype(*args: Any) -> np.dtype:
    return _refuse_object_dtype(np.dtype(*args))


def _scalar(dtype: np.dtype, *args: Any) -> Any:
    multiarray = getattr(np, "_core", None) or np.core
    return multiarray.multiarray.scalar(_refuse_object_dtype(dtype), *args)


def _frombuffer(buf: Any, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    _refuse_object_dtype(dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":  # the only use: bytes in protocol 2
        raise UnsafePickleError(f"the pickle calls _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _load_storage(data: bytes) -> Any:
    """The nested ``torch.save`` of a storage, read by torch's own weights-only unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("the pickle passes a non-bytes payload to torch.storage._load_from_bytes")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError("its nested torch storage is not plain data (torch's weights-only "
                                "reader refused it)") from e


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, (torch.UntypedStorage, torch.TypedStorage)):
        raise UnsafePickleError(f"the pickle rebuilds a tensor from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())


_NP = ("numpy.core", "numpy._core")
ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    **{(f"{p}.multiarray", "_reconstruct"): _reconstruct for p in _NP},
    **{(f"{p}.multiarray", "scalar"): _scalar for p in _NP},
    **{(f"{p}.numeric", "_frombuffer"): _frombuffer for p in _NP},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and torch tensors and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the pickle asks for {module}.{name}, which could run code") from None


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``UnsafePickleError`` on a refused global)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_log_mel_pickle(path: str | Path) -> torch.Tensor:
    """An AVSBench ``.pkl`` (or ``torch.save`` file) → [N, 1, 96, 64] float32, no code executed."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if data[:4] == b"PK\x03\x04":  # a torch.save zip file: torch's own weights-only reader
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            obj = safe_load(data)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"refusing to load {path}: {e}; regenerate it from audio_wav "
                                "or read the wav instead (audio='wav')") from None
    except Exception as e:  # truncated/corrupt files: one line, not a pickle traceback
        raise MediaError(f"cannot read {path} ({type(e).__name__}: {e}); regenerate it from "
                         "audio_wav or read the wav instead (audio='wav')") from e
    x = torch.as_tensor(obj.copy() if isinstance(obj, np.ndarray) else obj).detach().to(torch.float32)
    if x.dim() == 3:
        x = x[:, None]  # [N, 96, 64] → [N, 1, 96, 64]
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 96, 64):
        raise MediaError(f"{path} holds shape {tuple(x.shape)}, not VGGish log-mel [N, 1, 96, 64]; "
                         "regenerate it from audio_wav or read the wav instead (audio='wav')")
    return x.contiguous()
