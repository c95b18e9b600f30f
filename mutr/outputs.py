"""Write a segmentation run to an output folder: what ``mutr segment`` leaves on disk.

Layout of the folder (``--out``; default ``./<source name>_mutr/`` in the current directory)::

    overlay.mp4                       every input frame in [start, end) with the masks drawn,
                                      the input's size, timestamps and audio (H.264)
    masks/prompt-<k>/<index:05d>.png  one 0/255 PNG per processed frame and prompt, named by the
    masks/prompts.json                frame's index in the whole input; prompt folder -> text
    masks.rle.json                    COCO RLE, score, box [x, y, w, h] px and time per prompt and
                                      processed frame, with the video's metadata

With ``stride`` k only every k-th frame is processed: PNG and RLE hold those frames under their
true indices, while the overlay keeps every input frame, each showing the latest processed mask
(the skipped frames are decoded a second time, in step, so memory stays bounded).

Each output is written under a temporary name and renamed into place when complete (see
:mod:`mutr.io.writers`): an error or Ctrl-C leaves no file under a final name, and an existing
output is replaced only with ``overwrite``.

Damaged audio packets skipped by the sound prompt and by the overlay's sound track (the same
packets when both read the video's own track) give one warning per file at the end, and the
summary's ``audio_damage`` counts them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mutr.errors import InputError, OutputExistsError
from mutr.io.writers import OverlayWriter, PngMaskWriter, RleWriter
from mutr.predictor import FrameResult, SegmentRun

__all__ = ["FORMATS", "OUTPUT_NAMES", "WriteSummary", "check_outputs", "default_out_dir", "parse_formats",
           "write_outputs"]

FORMATS = ("overlay", "png", "rle")
OUTPUT_NAMES = {"overlay": "overlay.mp4", "png": "masks", "rle": "masks.rle.json"}


@dataclass
class WriteSummary:
    """What a run did: processed ``frames``, ``input_frames`` seen (the overlay's frame count when
    written, else the processed count), wall ``seconds``, processed frames per second, the
    path of each output by format, and per audio file decoded (the prompt's, the overlay's) the
    damaged packets skipped (:meth:`mutr.io.decode.Damage.to_dict`)."""

    source: str
    prompts: list[str]
    frames: int
    input_frames: int
    seconds: float
    fps: float
    out_dir: str
    outputs: dict[str, str] = field(default_factory=dict)
    audio_damage: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def default_out_dir(source: str | os.PathLike) -> Path:
    """``./<name>_mutr`` in the current directory (the name without its extension)."""
    path = Path(source)
    stem = path.stem if path.suffix else path.name
    return Path.cwd() / f"{stem or 'video'}_mutr"


def parse_formats(value: str | Iterable[str]) -> list[str]:
    """"overlay,png" -> ["overlay", "png"] in canonical order; unknown names raise InputError."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {x.strip().lower() for x in items if x.strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown or not names:
        raise InputError(f"unknown output format {', '.join(unknown) or '(none)'}: choose from {','.join(FORMATS)}")
    return [f for f in FORMATS if f in names]


def check_outputs(out_dir: str | os.PathLike, formats: Iterable[str], overwrite: bool) -> dict[str, Path]:
    """The output paths by format; refuses a file as ``out_dir`` and existing outputs (no overwrite)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        names = ", ".join(OUTPUT_NAMES.values())
        raise InputError(f"--out {out} is a file; it must be a folder (it will hold {names}): choose another --out")
    paths = {f: out / OUTPUT_NAMES[f] for f in formats}
    if not overwrite:
        for p in paths.values():
            if p.exists() or p.is_symlink():
                raise OutputExistsError(f"{p} already exists: pass --overwrite to replace it, or choose another --out")
    return paths


def write_outputs(run: SegmentRun, out_dir: str | os.PathLike, formats: Iterable[str] = FORMATS, *,
                  overwrite: bool = False, on_result: Callable[[FrameResult], None] | None = None,
                  background: bool = True) -> WriteSummary:
    """Consume ``run`` and write the chosen formats into ``out_dir``; ``on_result`` sees each result.

    With ``background`` the encoders (H.264, PNG, RLE) run in a second thread, a bounded queue
    behind the model, so the model never waits for them (they release the GIL while encoding).
    """
    formats = parse_formats(list(formats))
    paths = check_outputs(out_dir, formats, overwrite)
    out = Path(out_dir)
    created = not out.exists()
    info, prompts = run.info, run.prompts
    counts = {"frames": 0, "shown": 0}
    overlay = None
    if run.audio is not None:
        run.audio.warn_damage = False  # one warning below for the prompt and the overlay together
    began = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            overlay = png = rle = None
            if "rle" in paths:
                rle = stack.enter_context(RleWriter(paths["rle"], info, prompts, overwrite=overwrite))
            if "png" in paths:
                png = stack.enter_context(PngMaskWriter(paths["png"], prompts, overwrite=overwrite))
            if "overlay" in paths:
                overlay = stack.enter_context(OverlayWriter(paths["overlay"], info, prompts, overwrite=overwrite))
            stack.callback(run.close)
            # with a stride the overlay also needs the skipped frames: a second decoder, kept in step
            every = run.source.iter_frames(include_skipped=True) if overlay and run.source.stride > 1 else None

            def write(result: FrameResult) -> None:
                masks = list(result.masks)
                if overlay is not None:
                    if every is None:
                        overlay.write(_frame(result), masks)
                        counts["shown"] += 1
                    else:
                        for frame in every:
                            overlay.write(frame, masks if frame.index == result.index else None)
                            counts["shown"] += 1
                            if frame.index >= result.index:
                                break
                if png is not None:
                    png.write(result.index, masks)
                if rle is not None:
                    rle.write(result.index, result.time, masks, result.scores.tolist(), result.boxes.tolist())
                counts["frames"] += 1

            writer = stack.enter_context(_Behind(write)) if background else None
            for result in run:
                if writer is not None:
                    writer.put(result)
                else:
                    write(result)
                if on_result is not None:
                    on_result(result)
            if writer is not None:
                writer.finish()
            if every is not None:
                for frame in every:  # skipped frames after the last processed one
                    overlay.write(frame)
                    counts["shown"] += 1
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: never removes anything but the folder we made
        raise
    seconds = time.perf_counter() - began
    frames, shown = counts["frames"], counts["shown"]
    damage = _audio_damage(run, overlay)
    return WriteSummary(str(info.path), list(prompts), frames, shown if overlay is not None else frames,
                        round(seconds, 3), round(frames / seconds, 3) if seconds > 0 else 0.0, str(out),
                        {f: str(p) for f, p in paths.items()}, {name: d.to_dict() for name, d in damage.items()})


def _audio_damage(run: SegmentRun, overlay: OverlayWriter | None) -> dict:
    """Per audio file decoded: what was skipped, merged over the prompt and the overlay; warns once per file."""
    found = {}
    if run.audio is not None and run.audio.damage is not None:
        found[str(run.audio.stream.path)] = run.audio.damage
    if overlay is not None and overlay.audio_damage is not None:
        path = str(run.info.path)
        found[path] = overlay.audio_damage.merge(found.get(path))
    for path, damage in found.items():
        message = damage.audio_warning(Path(path).name)
        if message and damage.decoded_seconds > 0:  # nothing decoded: the prompt fails, the overlay warns
            warnings.warn(message, stacklevel=3)
    return found


class _Behind:
    """``write(item)`` for each ``put(item)``, in order, in a thread at most ``size`` items behind.
    An error in the thread is raised by the next ``put``/``finish``; leaving the ``with`` block
    early (an error, Ctrl-C) stops the thread before the writers are aborted."""

    _END = object()

    def __init__(self, write: Callable[[FrameResult], None], size: int = 16) -> None:
        self._write, self._queue = write, queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mutr-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is self._END:
                return
            try:
                self._write(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the model's thread
                self._error = e
                return

    def put(self, item) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.put(self._END)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error
        if not self._thread.is_alive() and self._stop.is_set():
            raise RuntimeError("the output writer stopped")

    def __enter__(self) -> "_Behind":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _frame(result: FrameResult):
    from mutr.io.video import Frame

    return Frame(result.index, result.time, result.image, True)
