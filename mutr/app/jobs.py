"""One segmentation job of the web page (``mutr app``), with no web code: checks, run, results.

A job is exactly ``mutr segment``: :class:`mutr.Predictor` streams the frames and
:func:`mutr.outputs.write_outputs` writes the overlay, the PNG masks and the RLE JSON. This module
only adds what a page needs around that: the page's limits (upload size, processed duration),
prompts typed one per line, progress as (frames done, total, frames/s), the PNG folder zipped for
one download, a strip of mask thumbnails per prompt, and a per-prompt score.

Every file a job makes lives in its own folder under a :class:`Workspace`; a failed job removes its
folder at once, a finished one when the page has taken its results (``Workspace.release``), and
``Workspace.close`` removes everything when the server stops.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mutr.errors import InputError, MediaError

__all__ = ["DEMO", "JobRequest", "JobResult", "Limits", "PromptResult", "Workspace", "checkpoint_choices",
           "default_size", "parse_prompts", "run_job"]

DEMO = "demo"  # the checkpoint choice meaning the bundled demo model
DEMO_SIZE = 160  # the demo model's training size (examples/demo/checkpoint/scores.json)
STRIP_FRAMES = 8  # thumbnails per prompt strip
THUMB_HEIGHT = 96

Progress = Callable[[int, "int | None", float], None]  # (frames done, total or None, frames per second)


@dataclass(frozen=True)
class Limits:
    """What one job may take: the uploaded file's size and the processed span's length."""

    max_upload_mb: float = 200.0
    max_seconds: float = 120.0


@dataclass(frozen=True)
class JobRequest:
    """What the page asks for. ``audio``: None, ``"from-video"`` or a sound file's path;
    ``checkpoint``: :data:`DEMO`, a downloaded registry name or a checkpoint folder."""

    video: Path
    texts: tuple[str, ...] = ()
    audio: str | Path | None = None
    checkpoint: str = DEMO
    start: float | None = None
    end: float | None = None
    size: int = DEMO_SIZE


@dataclass(frozen=True)
class PromptResult:
    """One prompt's result: ``score`` is the mean over processed frames of the selected query's
    window score; ``frames_with_mask`` how many processed frames have a non-empty mask."""

    text: str
    score: float
    frames_with_mask: int
    strip: Path


@dataclass(frozen=True)
class JobResult:
    folder: Path
    overlay: Path
    masks_zip: Path
    rle: Path
    prompts: list[PromptResult]
    frames: int
    overlay_frames: int
    seconds: float
    fps: float


def parse_prompts(text: str | None) -> tuple[str, ...]:
    """One prompt per line; blank lines and surrounding spaces are dropped."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def default_size(checkpoint: str) -> int:
    """The model input's short side to offer: the demo model's training size, else the official 432
    (mutr.io.transforms.INFERENCE_SIZE; not imported, so that the page starts without torch)."""
    return DEMO_SIZE if checkpoint == DEMO else 432


def checkpoint_choices(extra: str | None = None) -> list[tuple[str, str]]:
    """(label, value) for the page's checkpoint menu: the demo model, ``extra`` (the server's
    ``--checkpoint``) and every registry checkpoint already downloaded. Never touches the network."""
    from mutr.hub import is_downloaded, list_entries

    choices = [("bundled demo model (synthetic shapes only)", DEMO)]
    if extra and extra != DEMO:
        choices.append((extra, extra))
    for entry in list_entries():
        if entry.kind in ("official-mutr", "mutr") and entry.name != extra and is_downloaded(entry):
            choices.append((f"{entry.name} (downloaded)", entry.name))
    return choices


class Workspace:
    """A private temporary folder holding one sub-folder per job; ``close()`` removes it all."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mutr-app-", dir=root))
        self._lock = threading.Lock()

    def new_job(self) -> Path:
        folder = self.root / "jobs" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def release(self, folder: str | os.PathLike | None) -> None:
        """Remove a job's folder (only folders inside this workspace)."""
        if folder is None:
            return
        path = Path(folder).resolve()
        if path.parent == (self.root / "jobs").resolve():
            shutil.rmtree(path, ignore_errors=True)

    def jobs(self) -> list[Path]:
        base = self.root / "jobs"
        return sorted(base.iterdir()) if base.is_dir() else []

    def close(self) -> None:
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_request(request: JobRequest, limits: Limits) -> None:
    """Refuse what the page cannot run, before anything slow; messages say what to change on the page."""
    if not request.texts and request.audio is None:
        raise InputError("nothing to segment: type a prompt such as \"the red car\", or tick "
                         "\"use the video's own sound\", or upload a sound file")
    video = Path(request.video)
    if not video.is_file():
        raise InputError("no video: upload one, or click \"Use the demo clip\"")
    size_mb = video.stat().st_size / 2**20
    if size_mb > limits.max_upload_mb:
        raise InputError(f"the video is {size_mb:.3g} MB; this page takes at most {limits.max_upload_mb:g} MB: "
                         "upload a shorter or smaller clip (or restart with `mutr app --max-upload-mb N`)")
    if request.audio is not None and str(request.audio) != "from-video" and not Path(request.audio).is_file():
        raise InputError("the sound file is missing: upload it again, or untick the sound")
    if request.start is not None and request.end is not None and request.end <= request.start:
        raise InputError(f"end ({request.end:g} s) must be after start ({request.start:g} s): change start or end")


def run_job(request: JobRequest, predictor, folder: Path, limits: Limits = Limits(),
            on_progress: Progress | None = None) -> JobResult:
    """Segment ``request`` with ``predictor`` into ``folder`` (the overlay, masks.zip,
    masks.rle.json and one strip PNG per prompt). On any error ``folder`` is removed."""
    from mutr.io.video import open_source
    from mutr.outputs import write_outputs

    try:
        check_request(request, limits)
        try:
            source = open_source(request.video, request.start, request.end)
        except MediaError as exc:  # the library's message holds the server's path and FFmpeg's words
            raise MediaError(f"{Path(request.video).name} is not a video FFmpeg can read: upload a video file "
                             "(MP4, MOV, MKV, WebM, ...)") from exc
        _check_span(source, request, limits)
        run = predictor.segment(source, texts=list(request.texts), audio=request.audio, size=request.size)
        strips = _StripCollector(run.total, len(run.prompts))
        began, done = time.perf_counter(), 0

        def step(result) -> None:
            nonlocal done
            done += 1
            strips.add(done - 1, result)
            if on_progress is not None:
                elapsed = time.perf_counter() - began
                on_progress(done, run.total, done / elapsed if elapsed > 0 else 0.0)

        summary = write_outputs(run, folder / "out", on_result=step)
        masks = folder / "out" / "masks"
        zipped = _zip_folder(masks, folder / "masks.zip")
        shutil.rmtree(masks)
        prompts = [PromptResult(text, strips.mean_score(k), strips.frames_with_mask[k],
                                strips.save(k, text, folder / f"strip-{k}.png"))
                   for k, text in enumerate(run.prompts)]
        return JobResult(folder, Path(summary.outputs["overlay"]), zipped, Path(summary.outputs["rle"]), prompts,
                         summary.frames, summary.input_frames, summary.seconds, summary.fps)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _check_span(source, request: JobRequest, limits: Limits) -> None:
    info = source.info
    if request.audio == "from-video" and (info.kind != "video" or not info.has_audio):
        raise MediaError(f"{Path(request.video).name} has no sound: untick \"use the video's own sound\", "
                         "upload a sound file, or type a prompt")
    if info.duration is None:
        return
    begin = request.start or 0.0
    end = min(info.duration, request.end) if request.end is not None else info.duration
    if begin >= info.duration:
        raise InputError(f"start ({begin:g} s) is past the end of the video ({info.duration:.1f} s): lower start")
    if end - begin > limits.max_seconds:
        raise InputError(f"{end - begin:.0f} s of video is more than this page segments at once "
                         f"({limits.max_seconds:g} s): set start/end to a shorter span "
                         "(or restart with `mutr app --max-seconds N`)")


def _zip_folder(folder: Path, dest: Path) -> Path:
    """``masks/prompt-<k>/<index>.png`` and ``prompts.json`` as ``masks/...`` inside ``dest`` (PNGs stored)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path("masks") / path.relative_to(folder))
    return dest


class _StripCollector:
    """Keeps up to STRIP_FRAMES evenly spaced thumbnails per prompt while the run streams, and the
    per-prompt score sums."""

    def __init__(self, total: int | None, prompts: int) -> None:
        n = total or STRIP_FRAMES
        self.wanted = set(np.linspace(0, n - 1, min(n, STRIP_FRAMES)).round().astype(int).tolist())
        self.thumbs: list[list[np.ndarray]] = [[] for _ in range(prompts)]
        self.score_sums = np.zeros(prompts)
        self.frames_with_mask = [0] * prompts
        self.count = 0

    def add(self, position: int, result) -> None:
        from mutr.io.writers import draw_overlay, prompt_colors

        self.count += 1
        self.score_sums += result.scores
        colors = prompt_colors(len(self.thumbs))
        for k, mask in enumerate(result.masks):
            self.frames_with_mask[k] += bool(mask.any())
            if position in self.wanted:
                tinted = draw_overlay(result.image, [mask], [""], [colors[k]], alpha=0.6)
                self.thumbs[k].append(_thumbnail(tinted))

    def mean_score(self, k: int) -> float:
        return float(self.score_sums[k] / self.count) if self.count else 0.0

    def save(self, k: int, text: str, path: Path) -> Path:
        from PIL import Image

        thumbs = self.thumbs[k] or [np.zeros((THUMB_HEIGHT, THUMB_HEIGHT, 3), np.uint8)]
        gap = np.full((THUMB_HEIGHT, 4, 3), 255, np.uint8)
        row = np.concatenate([x for t in thumbs for x in (t, gap)][:-1], axis=1)
        Image.fromarray(row).save(path)
        return path


def _thumbnail(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    width = max(1, round(w * THUMB_HEIGHT / h))
    return np.asarray(Image.fromarray(image).resize((width, THUMB_HEIGHT), Image.BILINEAR))


def describe(result: JobResult) -> str:
    """A Markdown summary: the run's speed and a table of prompts with their score."""
    rows = "\n".join(f"| {k + 1} | {md_escape(p.text)} | {p.score:.3f} | {p.frames_with_mask} / {result.frames} |"
                     for k, p in enumerate(result.prompts))
    return (f"Segmented **{result.frames} frames** in {result.seconds:.1f} s ({result.fps:.2f} frames/s).\n\n"
            f"| # | prompt | score | frames with a mask |\n| --- | --- | --- | --- |\n{rows}")


def md_escape(text: str) -> str:
    """Text shown as itself in Markdown (file names with underscores, prompts with stars or pipes);
    backticks are kept, so that commands in messages show as code."""
    return re.sub(r"([\\*_\[\]<>|#])", r"\\\1", text).replace("\n", " ")


def strips(result: JobResult) -> Sequence[tuple[str, str]]:
    """(image path, caption) per prompt, for a gallery."""
    return [(str(p.strip), f"{p.text} — score {p.score:.2f}") for p in result.prompts]
