"""The evaluation folder: atomic writes, what counts as finished, and the resume guard.

``--out`` holds::

    run.json           what produced predictions/ (dataset, split, weights fingerprint, size,
                       precision, format): a resumed run must match it
    predictions/       the --predictions layout of the benchmark (see mutr.evaluate)
    per_video.csv      one row per video (DAVIS also per_object.csv)
    per_video.png      per-video J&F (DAVIS) or mIoU (AVSBench), sorted
    submission.zip     Ref-YouTube-VOS: Annotations/<video>/<exp_id>/<frame>.png for the server
    metrics.json       written last: its presence means the evaluation finished

Resume: each unit of predictions (a video, or for Ref-DAVIS one annotator set of a video) is
written in a hidden temporary sibling and renamed into place when complete, so a unit that
exists under its final name is complete; a rerun of the same command skips those units.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mutr.errors import InputError, MediaError, OutputExistsError

RUN_FILE = "run.json"
PREDICTIONS = "predictions"
METRICS_FILE = "metrics.json"
PER_VIDEO = "per_video.csv"
PER_OBJECT = "per_object.csv"
PLOT = "per_video.png"
SUBMISSION = "submission.zip"
REPORTS = (METRICS_FILE, PER_VIDEO, PER_OBJECT, PLOT, SUBMISSION)
_TMP = ".tmp-"


def _tmp_sibling(final: Path) -> Path:
    return final.parent / f"{_TMP}{final.name}.{uuid.uuid4().hex[:8]}"


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A temporary folder next to ``final``, renamed to ``final`` if the block completes (an
    existing ``final`` is replaced); removed if the block raises (Ctrl-C included)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = _tmp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """A temporary file path next to ``final``, moved onto ``final`` if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final).with_suffix(final.suffix)  # keep the suffix: np.save/savefig read it
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def clean_stale(root: Path) -> None:
    """Remove temporaries a killed run left behind (never under a final name)."""
    if root.is_dir():
        for p in sorted(root.rglob(f"{_TMP}*"), key=lambda x: len(x.parts)):
            remove(p)


def clean_stale_units(units) -> None:
    """Remove the temporaries a killed run left for these units only (other processes may be
    staging theirs beside them)."""
    for unit in units:
        if unit.path.parent.is_dir():
            for p in unit.path.parent.glob(f"{_TMP}{unit.path.name}.*"):
                remove(p)


def fingerprint(model: torch.nn.Module) -> str:
    """A short digest of the weights (names, shapes, sums; robust to the device they sit on)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            x = t.detach().double()
            h.update(f"{name}{tuple(t.shape)}{x.sum().item():.6e}{x.abs().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


def prepare_out(out: Path, run: dict[str, Any] | None, *, overwrite: bool) -> bool:
    """Check ``out`` before any work; returns True when a previous run of ``run`` is resumed.

    ``run`` is None when scoring --predictions (nothing under out/ is deleted then). With a
    model: ``overwrite`` removes this command's earlier outputs; otherwise a finished evaluation
    is refused and an unfinished one of the same run is resumed.
    """
    if run is None:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file: pass a folder")
        if (out / METRICS_FILE).exists() and not overwrite:
            raise OutputExistsError(f"{out / METRICS_FILE} already exists: pass --overwrite to replace the reports, "
                                    "or choose another --out")
        return False
    refuse_finished(out, overwrite)
    if overwrite:
        for name in (*REPORTS, RUN_FILE, PREDICTIONS):
            remove(out / name)
    resumed = False
    if (out / PREDICTIONS).exists():
        previous = _read_run(out / RUN_FILE)
        changed = sorted(k for k in run if k != "checkpoint" and previous.get(k) != run[k])
        if changed:
            detail = ", ".join(f"{k} {previous.get(k)!r} -> {run[k]!r}" for k in changed)
            raise OutputExistsError(f"{out} holds predictions of a different run ({detail}): pass --overwrite to "
                                    "start over, or choose another --out")
        resumed = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / RUN_FILE, json.dumps(run, indent=1) + "\n")
    except OSError as e:
        raise MediaError(f"cannot write in {out} ({e.strerror}): choose a writable --out") from e
    return resumed


def refuse_finished(out: Path, overwrite: bool) -> None:
    """A model run into a finished evaluation needs ``overwrite`` (a file as ``out`` never works)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder")
    if (out / METRICS_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{out} holds a finished evaluation ({METRICS_FILE}): pass --overwrite to run it "
                                f"again, or --predictions {out / PREDICTIONS} to re-score its predictions")


def _read_run(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputExistsError(f"{path.parent / PREDICTIONS} exists but {path.name} does not, so it cannot be "
                                "resumed: pass --overwrite to start over, or choose another --out") from None
    except ValueError as e:
        raise OutputExistsError(f"{path} is damaged ({e}): pass --overwrite to start over") from e
