"""The AVSBench log-mel reader loads tensors and arrays but never runs code from a pickle."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from mutr.data.safe_pickle import UnsafePickleError, load_log_mel_pickle, safe_load
from mutr.errors import MediaError

CANARY = "mutr-pickle-canary"


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


class _EvilStorage:
    """A payload hidden inside the nested storage bytes that a tensor pickle carries."""

    def __init__(self, inner: bytes) -> None:
        self.inner = inner

    def __reduce__(self):
        import torch.storage

        return (torch.storage._load_from_bytes, (self.inner,))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_the_format_avsbench_wrote(tmp_path, protocol):
    x = torch.randn(5, 1, 96, 64, requires_grad=True)  # as torchvggish returns it
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(x, protocol=protocol))
    out = load_log_mel_pickle(path)
    assert torch.equal(out, x.detach()) and not out.requires_grad and out.dtype == torch.float32


def test_reads_numpy_arrays_and_torch_save_files(tmp_path):
    a = np.random.default_rng(0).standard_normal((3, 96, 64)).astype(np.float32)
    (tmp_path / "np.pkl").write_bytes(pickle.dumps(a))
    assert torch.equal(load_log_mel_pickle(tmp_path / "np.pkl"), torch.from_numpy(a)[:, None])
    torch.save(torch.from_numpy(a)[:, None], tmp_path / "t.pt")
    assert torch.equal(load_log_mel_pickle(tmp_path / "t.pt"), torch.from_numpy(a)[:, None])


def test_refuses_a_malicious_pickle_without_running_it(tmp_path):
    target = tmp_path / CANARY
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(str(target))))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*mkdir.*audio='wav'") as info:
        load_log_mel_pickle(path)
    assert "\n" not in str(info.value)
    assert not target.exists()
    with pytest.raises(UnsafePickleError):
        safe_load(pickle.dumps(_Evil(str(target)), protocol=0))
    assert not target.exists()


def test_refuses_code_hidden_in_the_nested_storage(tmp_path):
    target = tmp_path / CANARY
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps(_EvilStorage(pickle.dumps(_Evil(str(target)), protocol=2))))
    with pytest.raises(UnsafePickleError, match="nested torch storage"):
        load_log_mel_pickle(path)
    assert not target.exists()


def test_refuses_object_arrays_and_foreign_classes():
    with pytest.raises(UnsafePickleError, match="object array"):
        safe_load(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        from collections import Counter

        safe_load(pickle.dumps(Counter("ab")))


def test_corrupt_or_wrong_shape_files_give_one_line_errors(tmp_path):
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(torch.zeros(5, 1, 96, 64))[:40])
    with pytest.raises(MediaError, match="cut.pkl"):
        load_log_mel_pickle(tmp_path / "cut.pkl")
    (tmp_path / "shape.pkl").write_bytes(pickle.dumps(torch.zeros(5, 2, 96, 64)))
    with pytest.raises(MediaError, match=r"\[N, 1, 96, 64\]"):
        load_log_mel_pickle(tmp_path / "shape.pkl")
