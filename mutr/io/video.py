"""Streamed frame sources: a video file, a folder of images, or one image.

``open_source(path)`` probes the input once (size, rotation, frame rate, audio) and returns a
:class:`FrameSource`; iterating it decodes one :class:`Frame` at a time, so a video of any length
needs the memory of a single frame.

Conventions
-----------
* ``Frame.index`` is the frame's position in the *whole* input (0-based, presentation order);
  ``start``/``end``/``stride`` select frames but never renumber them.
* ``Frame.time`` is seconds since the first frame, from each frame's own timestamp (pts), so
  variable-frame-rate videos keep their real timing. Frames without a pts get the previous
  time plus one nominal frame duration.
* ``start <= time < end`` selects the range; within it every ``stride``-th frame is *selected*.
  ``iter_frames(include_skipped=True)`` also yields the others (``selected=False``), which the
  overlay writer needs to keep every input frame.
* Rotation metadata (the display matrix) is applied in multiples of 90 degrees, so frames come
  out upright; ``width``/``height`` are the upright size. Mirror flags in the matrix are ignored.
* Size limits: frames under ``MIN_SIDE`` pixels on a side are refused. Frames whose long side is
  over ``MAX_LONG_SIDE`` are refused unless ``max_size`` is given; with ``max_size`` every frame
  whose long side exceeds it is downscaled (area filter, aspect kept) so the long side equals
  ``max_size``. Refusing instead of silently shrinking keeps the promise that outputs have the
  input's size unless the user asked otherwise.
* A stream that breaks part-way yields the frames that decode and warns once at the end.
  Reaching ``start`` decodes from the beginning of the file (no seeking), because seeking would
  lose the true frame index.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from mutr.errors import InputError, MediaError
from mutr.io.decode import Damage, decode_packets

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_LONG_SIDE",
    "MIN_SIDE",
    "Frame",
    "FrameSource",
    "VideoInfo",
    "open_source",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MIN_SIDE = 16
MAX_LONG_SIDE = 4096
DEFAULT_IMAGE_FPS = 30.0
_EPS = 1e-6  # seconds; absorbs float error in start/end comparisons


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded frame. ``image`` is [H, W, 3] uint8 RGB, upright; ``selected``: kept by ``stride``."""

    index: int
    time: float
    image: np.ndarray
    selected: bool = True


@dataclass(frozen=True)
class VideoInfo:
    """What a source is, known before decoding it.

    ``width``/``height`` are the size of the frames it yields (after rotation and any
    ``max_size`` downscale); ``source_width``/``source_height`` are the upright size as stored.
    ``rotation`` is the counter-clockwise angle (0, 90, 180, 270) applied to make frames
    upright. ``start_time`` is the container time (seconds) of the first frame, which the
    overlay writer needs to line the audio up. ``num_frames`` is None when the container does
    not store a count.
    """

    path: Path
    kind: Literal["video", "images", "image"]
    width: int
    height: int
    source_width: int
    source_height: int
    fps: float
    time_base: Fraction
    num_frames: int | None
    duration: float | None
    has_audio: bool
    rotation: int
    codec: str | None
    start_time: float = 0.0


def open_source(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    stride: int = 1,
    *,
    max_size: int | None = None,
    fps: float | None = None,
) -> FrameSource:
    """Probe ``path`` (video file, image folder or image) and return a streamed source.

    ``start``/``end`` are seconds (``start <= time < end``), ``stride`` keeps every k-th frame
    of that range, ``max_size`` caps the long side (see the module notes), and ``fps`` sets the
    frame rate given to image folders (default 30; ignored for videos).
    """
    path = Path(path)
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise InputError(f"stride must be a whole number >= 1, got {stride!r}: pass --stride 1 or more")
    if start is not None and start < 0:
        raise InputError(f"start must be >= 0 seconds, got {start}: pass a non-negative --start")
    if start is not None and end is not None and end <= start:
        raise InputError(f"end ({end} s) must be after start ({start} s): fix --start/--end")
    if max_size is not None and max_size < MIN_SIDE:
        raise InputError(f"max_size must be at least {MIN_SIDE} pixels, got {max_size}: pass a larger --max-size")
    if fps is not None and not fps > 0:
        raise InputError(f"fps must be > 0, got {fps}")
    if not path.exists():
        raise InputError(f"input not found: {path}: check the path")
    if path.is_dir():
        files = _list_images(path)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(f"no images in folder {path}: put frames there ({exts}) or pass a video file")
        info = _probe_images(path, files, fps or DEFAULT_IMAGE_FPS, max_size, kind="images")
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        files = [path]
        info = _probe_images(path, files, fps or DEFAULT_IMAGE_FPS, max_size, kind="image")
    else:
        files = []
        info = _probe_video(path, max_size)
    if start is not None and info.duration is not None and start >= info.duration + _EPS:
        raise InputError(
            f"start {start} s is past the end of {path.name} ({info.duration:.3f} s): pass a smaller --start"
        )
    return FrameSource(info, files, start=start, end=end, stride=stride, max_size=max_size)


class FrameSource:
    """An input that yields :class:`Frame` objects one at a time; iterate it more than once freely."""

    def __init__(
        self,
        info: VideoInfo,
        files: list[Path],
        *,
        start: float | None,
        end: float | None,
        stride: int,
        max_size: int | None,
    ) -> None:
        self.info = info
        self.start, self.end, self.stride = start, end, stride
        self._files = files
        self._max_size = max_size

    # Metadata, forwarded from `info` for convenience.
    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def time_base(self) -> Fraction:
        return self.info.time_base

    @property
    def num_frames(self) -> int | None:
        return self.info.num_frames

    @property
    def duration(self) -> float | None:
        return self.info.duration

    @property
    def has_audio(self) -> bool:
        return self.info.has_audio

    @property
    def rotation(self) -> int:
        return self.info.rotation

    @property
    def expected_frames(self) -> int | None:
        """Estimated number of frames ``iter(self)`` yields (for progress bars); None if unknown."""
        total = self.info.num_frames
        if total is None and self.info.duration is not None:
            total = round(self.info.duration * self.info.fps)
        if total is None:
            return None
        lo = math.ceil((self.start or 0.0) * self.info.fps - _EPS)
        hi = total if self.end is None else min(total, math.ceil(self.end * self.info.fps - _EPS))
        return max(0, math.ceil((hi - lo) / self.stride))

    def __iter__(self) -> Iterator[Frame]:
        return self.iter_frames()

    def __repr__(self) -> str:
        i = self.info
        return (
            f"FrameSource({str(i.path)!r}, {i.width}x{i.height}, {i.fps:.3f} fps, frames={i.num_frames}, "
            f"start={self.start}, end={self.end}, stride={self.stride})"
        )

    def iter_frames(self, include_skipped: bool = False) -> Iterator[Frame]:
        """Yield the frames in ``[start, end)``; every ``stride``-th has ``selected=True``.

        With ``include_skipped`` the frames between selected ones are yielded too.
        """
        raw = self._iter_images() if self.info.kind != "video" else self._iter_video()
        position = 0  # frames seen inside [start, end)
        for index, time, convert in raw:
            if self.start is not None and time < self.start - _EPS:
                continue
            if self.end is not None and time >= self.end - _EPS:
                break
            selected = position % self.stride == 0
            position += 1
            if selected or include_skipped:
                image = convert()
                if image is not None:  # None: an unreadable image, reported at the end
                    yield Frame(index=index, time=time, image=image, selected=selected)
        if position == 0 and (self.start is not None or self.end is not None):
            raise InputError(
                f"no frames of {self.info.path.name} fall between start={self.start} s and end={self.end} s: "
                "widen --start/--end"
            )

    # -- videos ---------------------------------------------------------------------------

    def _iter_video(self):
        import av

        info = self.info
        k = info.rotation // 90
        out_w, out_h = (info.height, info.width) if k % 2 else (info.width, info.height)  # stored orientation

        def converter(frame):
            def convert() -> np.ndarray:
                # max_size, or a stream that changes resolution mid-way: keep one output size
                if (frame.width, frame.height) != (out_w, out_h):
                    image = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
                else:
                    image = frame.to_ndarray(format="rgb24")
                if k:
                    image = np.ascontiguousarray(np.rot90(image, k))
                return image

            return convert

        try:
            container = av.open(str(info.path))
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f"cannot reopen {info.path}: {e}; check the file is still there") from e
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base or info.time_base
            first_pts: int | None = None
            last_time = -1.0 / info.fps
            index = -1
            decoded, error = _decode_tolerant(container, stream)
            for frame in decoded:
                index += 1
                if frame.pts is None:
                    time = last_time + 1.0 / info.fps
                else:
                    if first_pts is None:
                        first_pts = frame.pts
                    time = float((frame.pts - first_pts) * tb)
                last_time = time
                yield index, time, converter(frame)
            if not error.message and info.duration is not None:
                missing = info.duration - (last_time + 1.0 / info.fps)
                if missing > max(0.5, 2.0 / info.fps):
                    error.extra = f"the stream ends {missing:.2f} s before the duration the file declares"
            if error.message:
                warnings.warn(
                    f"{info.path.name}: {error.message}; read {index + 1} frames, the file looks damaged or "
                    "truncated (re-encode or repair it to get the rest)",
                    stacklevel=3,
                )
        finally:
            container.close()

    # -- images ---------------------------------------------------------------------------

    def _iter_images(self):
        info = self.info
        bad: list[str] = []

        def converter(file: Path):
            def convert() -> np.ndarray | None:
                try:
                    image = _read_image(file)
                except (OSError, ValueError) as e:
                    bad.append(f"{file.name} ({e})")
                    return None
                if image.size != (info.source_width, info.source_height):
                    raise MediaError(
                        f"{file} is {image.width}x{image.height} but the first image is "
                        f"{info.source_width}x{info.source_height}: give all images in a folder the same size"
                    )
                if image.size != (info.width, info.height):
                    image = image.resize((info.width, info.height), Image.Resampling.BOX)
                return np.asarray(image)

            return convert

        for index, file in enumerate(self._files):
            yield index, index / info.fps, converter(file)
        if bad:
            warnings.warn(
                f"skipped {len(bad)} unreadable image(s) in {info.path}: {', '.join(bad[:3])}"
                f"{' ...' if len(bad) > 3 else ''}; replace or remove them",
                stacklevel=3,
            )


class _DecodeError:
    """What a tolerant decode skipped, as the one line the video warning and error quote."""

    def __init__(self) -> None:
        self.damage = Damage()
        self.extra: str | None = None

    @property
    def message(self) -> str | None:
        d = self.damage
        if d.broken is not None:
            return f"the file is damaged after some frames ({d.broken})"
        if d.skipped:
            return f"{d.skipped} damaged packet(s) could not be decoded (last: {d.error})"
        return self.extra


def _decode_tolerant(container, stream) -> tuple[Iterator, _DecodeError]:
    """Decode ``stream``, skipping packets that fail to decode and stopping quietly where the file
    breaks (:func:`mutr.io.decode.decode_packets`); report it in the box."""
    box = _DecodeError()
    return decode_packets(container, stream, box.damage), box


def _probe_video(path: Path, max_size: int | None) -> VideoInfo:
    import av

    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as e:
        raise MediaError(f"{path} is not a video or image FFmpeg can read ({e}): pass a video file, image or image folder") from e
    except PermissionError as e:
        raise MediaError(f"cannot read {path}: permission denied; check the file's permissions") from e
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"cannot open {path} ({e}): it is damaged or not a video; pass a readable video file") from e
    try:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream: pass a video file (for audio-referred segmentation use --audio)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise MediaError(
                f"{path}: this FFmpeg build has no decoder for its video codec: "
                "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
            )
        stream.thread_type = "AUTO"
        decoded, error = _decode_tolerant(container, stream)
        first = next(decoded, None)
        if first is None:
            detail = f" ({error.message})" if error.message else ""
            raise MediaError(f"{path}: no frame could be decoded{detail}: re-encode or repair the file")
        tb = stream.time_base or Fraction(1, 1000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        if stream.duration is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = None
        if duration is not None and first.pts is not None and stream.start_time is not None:
            duration -= float((first.pts - stream.start_time) * tb)  # time runs from the first frame
        start_time = float(first.pts * tb) if first.pts is not None else 0.0
        rotation = _rotation_of(first, path)
        w, h = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        width, height = _limit_size(w, h, max_size, path)
        return VideoInfo(
            path=path,
            kind="video",
            width=width,
            height=height,
            source_width=w,
            source_height=h,
            fps=fps,
            time_base=tb,
            num_frames=stream.frames or None,
            duration=duration,
            has_audio=bool(container.streams.audio),
            rotation=rotation,
            codec=stream.codec_context.name,
            start_time=start_time,
        )
    finally:
        container.close()


def _rotation_of(frame, path: Path) -> int:
    try:
        angle = float(frame.rotation or 0)
    except Exception:  # noqa: BLE001 - malformed side data: treat as unrotated
        return 0
    quarter = round(angle / 90)
    if abs(angle - 90 * quarter) > 1:
        warnings.warn(
            f"{path.name} asks for a {angle:g} degree rotation; using {90 * quarter % 360} degrees "
            "(only multiples of 90 are supported)",
            stacklevel=4,
        )
    return 90 * quarter % 360


def _limit_size(w: int, h: int, max_size: int | None, path: Path) -> tuple[int, int]:
    if min(w, h) < MIN_SIDE:
        raise MediaError(f"{path} frames are {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed: use a larger input")
    long = max(w, h)
    if max_size is None:
        if long > MAX_LONG_SIDE:
            raise MediaError(
                f"{path} frames are {w}x{h}, over the {MAX_LONG_SIDE}-pixel limit: pass --max-size {MAX_LONG_SIDE} "
                f"to downscale, or --max-size {long} to keep the full size (slow, needs much memory)"
            )
        return w, h
    if long <= max_size:
        return w, h
    scale = max_size / long
    nw, nh = (max_size, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_size)
    if min(nw, nh) < MIN_SIDE:
        raise InputError(
            f"--max-size {max_size} would shrink {path.name} ({w}x{h}) to {nw}x{nh}, under {MIN_SIDE} pixels: "
            "pass a larger --max-size"
        )
    return nw, nh


# -- image helpers ------------------------------------------------------------------------


def _natural_key(path: Path) -> list:
    """'frame2' sorts before 'frame10'; zero-padded names sort as plain names do."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _list_images(folder: Path) -> list[Path]:
    files = [
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=_natural_key)


def _read_image(file: Path) -> Image.Image:
    with Image.open(file) as im:
        im = ImageOps.exif_transpose(im)  # EXIF orientation: come out upright
        return im.convert("RGB")


def _probe_images(
    path: Path, files: list[Path], fps: float, max_size: int | None, kind: Literal["images", "image"]
) -> VideoInfo:
    first = None
    errors = []
    for file in files:
        try:
            first = _read_image(file)
            break
        except (OSError, ValueError) as e:
            errors.append(f"{file.name}: {e}")
    if first is None:
        raise MediaError(f"no readable image in {path} ({'; '.join(errors[:2])}): replace the broken files")
    w, h = first.size
    width, height = _limit_size(w, h, max_size, path)
    rate = Fraction(fps).limit_denominator(1001)
    return VideoInfo(
        path=path,
        kind=kind,
        width=width,
        height=height,
        source_width=w,
        source_height=h,
        fps=float(fps),
        time_base=1 / rate,
        num_frames=len(files),
        duration=len(files) / fps,
        has_audio=False,
        rotation=0,
        codec=None,
    )
