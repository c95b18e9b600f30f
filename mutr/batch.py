"""Segment many videos: ``mutr segment A.mp4 B.mp4 clips/ 'more/*.mp4' --manifest jobs.jsonl``.

Inputs
------
A path (video file, image, folder of frames), a folder of videos (every video file in it, in
natural order; a folder with no video but sub-folders of frames gives one video per sub-folder),
a glob (quoted, so mutr expands it; matching nothing is an error), or a JSON Lines manifest, one
video per line::

    {"video": "clips/a.mp4", "text": ["the red car"], "audio": "from-video", "out": "a"}

``video`` is required; ``text`` (a string or list), ``audio`` (``"from-video"`` or a media file)
and ``out`` are optional and default to the command's own options. Relative paths in a manifest
are relative to the manifest's folder; ``out`` is relative to ``--out``.

Outputs
-------
``--out DIR`` holds one folder per video (``DIR/<video name without extension>/`` unless the
manifest says ``out``), each with the single-video layout of :mod:`mutr.outputs`, and
``summary.json`` (``summary.shard-I-of-N.json`` for ``--shard I/N``). Two videos that would share
a folder are an error before any work. Each video's folder is written as a hidden temporary
sibling and renamed into place when all its outputs are complete, so a folder under its final
name is finished: rerunning the same command skips it (resume), and a killed run leaves no
half-written folder (its temporary is removed by the next run). Per-video outputs hold only what
the video and the model determine (they are byte-identical whatever the number of processes);
times and devices go to the summary.

A video that fails is recorded with its one-line error and the others go on.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mutr.distributed import World, balanced_shares
from mutr.errors import InputError, MutrError
from mutr.files import atomic_write, remove_path, replace_path
from mutr.io.video import IMAGE_EXTENSIONS, open_source
from mutr.outputs import OUTPUT_NAMES, write_outputs

__all__ = ["VIDEO_EXTENSIONS", "BatchEvent", "SegmentOptions", "VideoJob", "VideoStatus", "expand_inputs",
           "in_order", "is_batch", "plan_jobs", "read_manifest", "segment_share", "share_of", "summary_name",
           "write_summary"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                              ".flv", ".wmv", ".3gp", ".ogv", ".gif"})
MANIFEST_KEYS = ("video", "text", "audio", "out")
FROM_VIDEO = "from-video"
_TMP = ".mutr-tmp-"


@dataclass(frozen=True)
class VideoJob:
    """One video to segment: its prompts and its output folder. ``origin`` says where it came
    from (the argument, or ``manifest:line``) for error messages."""

    video: Path
    texts: tuple[str, ...]
    audio: str | None
    out: Path
    origin: str


@dataclass(frozen=True)
class SegmentOptions:
    """What every video of a batch shares (``mutr segment``'s options)."""

    formats: tuple[str, ...] = ("overlay", "png", "rle")
    start: float | None = None
    end: float | None = None
    stride: int = 1
    max_size: int | None = None
    size: int = 432
    window: int = 16
    overwrite: bool = False


@dataclass
class VideoStatus:
    """How one video went: ``done`` (segmented now), ``skipped`` (finished by an earlier run),
    or ``failed`` (``error`` is the one-line reason)."""

    video: str
    out: str
    status: str
    frames: int | None = None
    prompts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    rank: int = 0


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a share: ``kind`` "video" (``job`` starts; ``total`` its frames if known),
    "frame" (one more frame of it), or "status" (it ended: ``status`` says how)."""

    kind: str
    job: VideoJob
    total: int | None = None
    status: VideoStatus | None = None


# ---------------------------------------------------------------------- inputs
def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _videos_in(folder: Path) -> list[Path]:
    """The videos a folder stands for: its video files, or else its sub-folders of frames; none
    for a folder of frames (one video)."""
    from mutr.io.video import _natural_key

    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        return []
    videos = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    if not videos:
        videos = [p for p in entries if p.is_dir() and any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.iterdir())]
    return sorted(videos, key=_natural_key)


def is_batch(inputs: Sequence[str | os.PathLike]) -> bool:
    """True unless ``inputs`` is one existing file or frame folder (or one missing path without
    wildcards): then ``mutr segment`` keeps its single-video behaviour and layout."""
    if len(inputs) != 1:
        return True
    path = Path(inputs[0])
    if not path.exists():
        return _has_glob(str(inputs[0]))
    return path.is_dir() and bool(_videos_in(path))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(video, origin) for each input, folders and globs expanded, in the order given."""
    out: list[tuple[Path, str]] = []
    for item in inputs:
        text, path = str(item), Path(item).expanduser()
        if path.exists():
            found = _videos_in(path) if path.is_dir() else [path]
            if path.is_dir() and not found:
                found = [path]  # a folder of frames (or an empty folder, which fails as one video)
            out.extend((p, text) for p in found)
        elif _has_glob(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            matches = [p for p in matches if p.is_file() or (p.is_dir() and not _videos_in(p))]
            if not matches:
                raise InputError(f"{text} matches no file: check the pattern (quote it so mutr expands it)")
            out.extend((p, text) for p in matches)
        else:
            raise InputError(f"input not found: {text}: check the path")
    return out


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest's entries (``line`` added); a bad line is an error naming it."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"manifest not found: {path}: check the --manifest path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the manifest {path} ({e}): pass a UTF-8 JSON Lines file") from None
    entries = []
    base = path.parent
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where} is not JSON ({e.msg}): write one object per line, e.g. "
                             '{"video": "a.mp4", "text": ["the red car"]}') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or not entry["video"].strip():
            raise InputError(f'{where} has no "video": give each line {{"video": "PATH", ...}}')
        unknown = sorted(set(entry) - set(MANIFEST_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}: use only {', '.join(MANIFEST_KEYS)}")
        text = entry.get("text")
        if text is not None:
            text = [text] if isinstance(text, str) else text
            if not isinstance(text, list) or not all(isinstance(t, str) and t.strip() for t in text):
                raise InputError(f'{where}: "text" must be a phrase or a list of non-empty phrases')
        audio = entry.get("audio")
        if audio is not None and (not isinstance(audio, str) or not audio.strip()):
            raise InputError(f'{where}: "audio" must be "from-video" or a media file path')
        if audio is not None and audio != FROM_VIDEO:
            audio = str(base / Path(audio).expanduser())
        out = entry.get("out")
        if out is not None and (not isinstance(out, str) or not out.strip()):
            raise InputError(f'{where}: "out" must be a folder name')
        entries.append({"video": base / Path(entry["video"]).expanduser(), "text": text, "audio": audio,
                        "out": out, "origin": where})
    if not entries:
        raise InputError(f"the manifest {path} lists no video: add lines such as "
                         '{"video": "a.mp4", "text": ["the red car"]}')
    return entries


def plan_jobs(inputs: Sequence[str | os.PathLike], manifest: str | os.PathLike | None, out_root: str | os.PathLike,
              texts: Sequence[str] = (), audio: str | os.PathLike | None = None) -> list[VideoJob]:
    """Every video with its prompts and output folder; duplicate folders and videos with nothing
    to segment are errors (before any work)."""
    root = Path(out_root)
    rows: list[dict[str, Any]] = [{"video": p, "text": None, "audio": None, "out": None, "origin": o}
                                  for p, o in expand_inputs(inputs)]
    if manifest is not None:
        rows.extend(read_manifest(manifest))
    if not rows:
        raise InputError("no video to segment: give SOURCE paths, folders or globs, or --manifest FILE")
    jobs, seen = [], {}
    for row in rows:
        video: Path = row["video"]
        name = row["out"] or (video.stem if video.suffix else video.name) or "video"
        out = root / name
        key = os.path.normpath(os.path.abspath(out))
        if key in seen:
            raise InputError(f"{seen[key]} and {row['origin']} ({video.name}) would both write {out}: give them "
                             'different names, or set "out" per video in a --manifest')
        seen[key] = f"{row['origin']} ({video.name})" if row["origin"] != str(video) else str(video)
        job_texts = tuple(row["text"]) if row["text"] is not None else tuple(texts)
        job_audio = row["audio"] if row["audio"] is not None else (None if audio is None else str(audio))
        if not job_texts and job_audio is None:
            raise InputError(f'{row["origin"]}: nothing to segment in {video.name}: pass --text/--audio, or give '
                             'it "text" or "audio" in the manifest')
        jobs.append(VideoJob(video, job_texts, job_audio, out, row["origin"]))
    return jobs


# ---------------------------------------------------------------------- shares
def frame_count(job: VideoJob, options: SegmentOptions) -> int:
    """Frames the model will process (from the container's header); 1 when it cannot be read
    (such a video fails quickly on whichever process takes it)."""
    try:
        source = open_source(job.video, options.start, options.end, options.stride, max_size=options.max_size)
    except (MutrError, OSError):
        return 1
    return max(1, source.expected_frames or 1)


def share_of(jobs: Sequence[VideoJob], world: World, options: SegmentOptions) -> list[int]:
    """The positions of the jobs this process takes: size-balanced by frame count. Under torchrun
    the ranks probe a strided part each and exchange the counts, so each video is opened once."""
    mine = range(world.rank, len(jobs), world.size)
    counts = {i: frame_count(jobs[i], options) for i in mine}
    merged: dict[int, int] = {}
    for part in world.all_gather(counts):
        merged.update(part)
    sizes = [merged[i] for i in range(len(jobs))]
    return balanced_shares(sizes, world.shares)[world.share]


# ---------------------------------------------------------------------- running
def _is_finished(out: Path, formats: Sequence[str]) -> bool:
    return out.is_dir() and all((out / OUTPUT_NAMES[f]).exists() for f in formats)


def _prompts_in(out: Path) -> list[str] | None:
    """The text prompts a finished folder was made for (from masks/prompts.json), if it says."""
    try:
        mapping = json.loads((out / OUTPUT_NAMES["png"] / "prompts.json").read_text(encoding="utf-8"))
        return [mapping[f"prompt-{k}"] for k in range(len(mapping))]
    except (OSError, ValueError, KeyError):
        return None


def _clean_stale(out: Path) -> None:
    """Temporaries an earlier killed run left for this video (never a final name)."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{glob.escape(out.name)}{_TMP}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def segment_share(predictor, jobs: Sequence[VideoJob], options: SegmentOptions, *, rank: int = 0,
                  progress: Callable[[BatchEvent], None] | None = None,
                  raise_errors: bool = False) -> list[VideoStatus]:
    """Segment each job into its folder (``predictor``: a :class:`mutr.Predictor`); ``progress``
    sees each event. A job's failure becomes its status and the next job goes on (with
    ``raise_errors`` it propagates instead, for --debug); Ctrl-C and kills stop everything."""
    emit = progress or (lambda _event: None)
    statuses = []
    for job in jobs:
        status = _segment_one(predictor, job, options, rank, emit, raise_errors)
        statuses.append(status)
        emit(BatchEvent("status", job, status=status))
    return statuses


def _segment_one(predictor, job: VideoJob, options: SegmentOptions, rank: int,
                 emit: Callable[[BatchEvent], None], raise_errors: bool) -> VideoStatus:
    out = job.out
    _clean_stale(out)
    if out.exists() and not options.overwrite:
        if _is_finished(out, options.formats):
            done_for = _prompts_in(out)
            if done_for is None or job.audio is not None or done_for == list(job.texts):
                return VideoStatus(str(job.video), str(out), "skipped", rank=rank)
            return VideoStatus(str(job.video), str(out), "failed", rank=rank,
                               error=f"{out} holds results for other prompts ({', '.join(done_for)}): pass "
                                     "--overwrite to replace them, or choose another --out")
        return VideoStatus(str(job.video), str(out), "failed", rank=rank,
                           error=f"{out} exists but is not a finished output of --format {','.join(options.formats)}: "
                                 "pass --overwrite to replace it, or move it away")
    began = time.perf_counter()
    tmp = out.parent / f".{out.name}{_TMP}{uuid.uuid4().hex[:8]}"
    try:
        run = predictor.segment(job.video, texts=list(job.texts), audio=job.audio, start=options.start,
                                end=options.end, stride=options.stride, max_size=options.max_size,
                                window=options.window, size=options.size)
        emit(BatchEvent("video", job, total=run.total))
        summary = write_outputs(run, tmp, options.formats, on_result=lambda _r: emit(BatchEvent("frame", job)))
        replace_path(tmp, out, out.parent / f".{out.name}{_TMP}old-{uuid.uuid4().hex[:8]}")
    except Exception as e:  # noqa: BLE001 - one video's failure must not stop the others
        remove_path(tmp)
        if raise_errors:
            raise
        error = str(e) or type(e).__name__
        if not isinstance(e, (MutrError, OSError)):
            error = f"{type(e).__name__}: {error} (rerun this video alone with --debug for the traceback)"
        return VideoStatus(str(job.video), str(out), "failed", seconds=round(time.perf_counter() - began, 3),
                           error=error.splitlines()[0] if error else error, rank=rank)
    except BaseException:
        remove_path(tmp)
        raise
    return VideoStatus(str(job.video), str(out), "done", summary.frames, list(run.prompts),
                       round(time.perf_counter() - began, 3), rank=rank)


# ---------------------------------------------------------------------- summary
def summary_name(world: World) -> str:
    """summary.json, or summary.shard-I-of-N.json for one share of a job array."""
    shard = world.shard
    return "summary.json" if shard.count == 1 else f"summary.shard-{shard.index}-of-{shard.count}.json"


def in_order(jobs: Sequence[VideoJob], statuses: Sequence[VideoStatus]) -> list[VideoStatus]:
    """``statuses`` (gathered from every process) in the order the videos were given."""
    order = {str(j.out): k for k, j in enumerate(jobs)}
    return sorted(statuses, key=lambda s: order.get(s.out, len(order)))


def write_summary(out_root: str | os.PathLike, world: World, jobs: Sequence[VideoJob],
                  statuses: Sequence[VideoStatus], info: dict[str, Any]) -> Path:
    """``summary.json`` in ``out_root``: every video of this run in input order, with totals."""
    rows = in_order(jobs, statuses)
    totals = {k: sum(1 for s in rows if s.status == k) for k in ("done", "skipped", "failed")}
    report = {"format": "mutr-segment-summary", "version": 1,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "processes": world.size, "shard": str(world.shard), **info,
              "videos": len(rows), **totals, "frames": sum(s.frames or 0 for s in rows),
              "failed_videos": [{"video": s.video, "error": s.error} for s in rows if s.status == "failed"],
              "results": [asdict(s) for s in rows]}
    path = Path(out_root) / summary_name(world)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                                                  encoding="utf-8"))
    return path
