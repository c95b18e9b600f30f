"""The three outputs of ``mutr segment``: overlay video, PNG masks, COCO-RLE JSON.

Every writer is a context manager that writes under a hidden temporary name in the destination
folder and renames it into place (``os.replace``) only when complete:

    with OverlayWriter("out.mp4", source.info, ["the red car"]) as w:
        for frame in source.iter_frames(include_skipped=True):
            w.write(frame, masks)   # one [H, W] bool array (or None) per prompt

``close()`` commits, ``abort()`` removes the temporary output; leaving the ``with`` block by an
exception (KeyboardInterrupt included) aborts. An existing output is replaced only with
``overwrite=True``; otherwise :class:`~mutr.errors.OutputExistsError` is raised up front.

Layouts (see docs/interfaces.md):

* overlay: MP4/H.264 at the input's size, frame rate and timestamps, with the input's audio
  (mutr.io.overlay_audio).
  Odd sizes are encoded as 4:4:4 (4:2:0 needs even sizes), which some players (browsers,
  QuickTime) cannot play; a warning says so. AAC, MP3 and ALAC audio is copied as is; any other
  codec is transcoded to AAC. The first written frame becomes time 0 and the audio is cut to
  the written span, so ``--start``/``--end`` stay in sync.
* PNG masks: ``<dir>/prompt-<k>/<index:05d>.png``, 0/255 grayscale, plus ``<dir>/prompts.json``
  mapping each folder to its prompt.
* RLE JSON: ``{"format": "mutr-rle", "version": 1, "video": {...}, "prompts": [{"id", "text"}],
  "annotations": [{"prompt", "frame", "time", "segmentation": {"size": [h, w], "counts"},
  "score", "bbox": [x, y, w, h]}], "num_frames": N}``, one annotation per prompt and frame;
  ``segmentation`` is COCO RLE with ``counts`` as a UTF-8 string (``decode_rle`` reads it back).
"""

from __future__ import annotations

import colorsys
import json
import uuid
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mutr.errors import InputError, MediaError, OutputExistsError
from mutr.files import remove_path, replace_path
from mutr.io.decode import Damage
from mutr.io.overlay_audio import AudioTrack
from mutr.io.video import Frame, VideoInfo

__all__ = ["OverlayWriter", "PngMaskWriter", "RleWriter", "decode_rle", "draw_overlay", "prompt_colors"]


def prompt_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated RGB colours, the same for the same prompt position every run."""
    colors = []
    for k in range(n):
        hue = (k * 0.618033988749895 + 0.02) % 1.0  # golden-ratio steps keep neighbours apart
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


class _AtomicOutput:
    """Write to a temporary sibling of ``path``; rename it into place on ``close()``."""

    _is_dir = False

    def __init__(self, path: str | Path, *, overwrite: bool) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.tmp_path: Path | None = None
        self._done = False
        _refuse_existing(self.path, overwrite)
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MediaError(f"cannot create the output folder {parent} ({e.strerror}): choose another --out") from e
        self.tmp_path = parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if self._is_dir:
                self.tmp_path.mkdir()
            else:
                self.tmp_path.touch(exist_ok=False)
        except OSError as e:
            raise MediaError(f"cannot write in {parent} ({e.strerror}): choose a writable --out folder") from e

    # Subclasses: finish writing the temporary output / release resources on abort.
    def _finish(self) -> None: ...

    def _release(self) -> None: ...

    def close(self) -> None:
        """Finish the output and move it to its final name."""
        if self._done:
            return
        try:
            self._finish()
            _refuse_existing(self.path, self.overwrite)  # something may have appeared meanwhile
            _commit(self.tmp_path, self.path, is_dir=self._is_dir)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far; the final name is never touched."""
        if self._done:
            return
        self._done = True
        try:
            self._release()
        finally:
            if self.tmp_path is not None:
                remove_path(self.tmp_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close(): leave no temporary behind
        try:
            if not self._done:
                self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing useful to do
            pass


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it, or choose another --out")


def _commit(tmp: Path, path: Path, *, is_dir: bool) -> None:
    aside = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old" if is_dir else None
    try:
        replace_path(tmp, path, aside)
    except OSError as e:
        raise MediaError(f"cannot move the finished output to {path} ({e.strerror}): choose another --out") from e


def _as_masks(masks: Sequence, n: int, height: int, width: int, allow_none: bool) -> list[np.ndarray | None]:
    if len(masks) != n:
        raise InputError(f"got {len(masks)} masks for {n} prompts: pass one mask per prompt")
    out: list[np.ndarray | None] = []
    for mask in masks:
        if mask is None:
            if not allow_none:
                raise InputError("a mask is None: pass an all-False array for an empty mask")
            out.append(None)
            continue
        m = np.asarray(mask)
        if m.shape != (height, width):
            raise InputError(f"mask has shape {m.shape}, the video is {height}x{width}: resize masks to the frame size")
        if m.dtype != np.bool_:
            if not np.issubdtype(m.dtype, np.integer):
                raise InputError(f"masks must be boolean or integer, got {m.dtype}: threshold probabilities (p > 0.5) first")
            m = m != 0
        out.append(m)
    return out


# -- overlay video ------------------------------------------------------------------------


class OverlayWriter(_AtomicOutput):
    """MP4 with each prompt's mask blended in its colour and labelled with its text.

    ``write(frame, masks)`` takes every input frame (``iter_frames(include_skipped=True)``) and,
    per prompt, the latest mask or None to keep showing the previous one.
    """

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        prompts: Sequence[str],
        *,
        overwrite: bool = False,
        audio: bool = True,
        alpha: float = 0.5,
        crf: int = 20,
        codec: str = "libx264",
    ) -> None:
        import av

        super().__init__(path, overwrite=overwrite)
        self.info = info
        self.prompts = list(prompts)
        self.colors = prompt_colors(len(self.prompts))
        self.alpha = alpha
        self._last: list[np.ndarray | None] = [None] * len(self.prompts)
        self._t0: float | None = None
        self._last_pts = -1
        self._last_time = 0.0
        self._audio: AudioTrack | None = None
        self._font = _label_font(info.width, info.height)
        w, h = info.width, info.height
        try:
            self._container = av.open(str(self.tmp_path), "w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise MediaError(f"cannot write {self.tmp_path} ({e}): choose a writable --out folder") from e
        try:
            codec = _pick_video_codec(codec)
            rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(30)
            self._tb = info.time_base if codec == "libx264" or info.time_base.denominator <= 65535 else Fraction(1, 1000)
            options = {"crf": str(crf), "preset": "fast"} if codec == "libx264" else {}
            stream = self._container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height = w, h
            if codec != "libx264":
                stream.bit_rate = max(500_000, int(w * h * float(rate) * 0.2))
            odd = w % 2 or h % 2
            if odd and codec == "libx264":
                warnings.warn(
                    f"the video is {w}x{h} (odd size): the overlay is H.264 4:4:4, which browsers and QuickTime "
                    "cannot play (VLC/mpv can); crop or pad the input to even sizes for a widely playable file",
                    stacklevel=2,
                )
            self._pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
            stream.pix_fmt = self._pix_fmt
            stream.codec_context.time_base = self._tb
            stream.time_base = self._tb
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited
            stream.thread_type = "AUTO"
            self._stream = stream
            if audio and info.has_audio and info.kind == "video":
                self._audio = AudioTrack.open(self._container, info)
        except BaseException:
            self.abort()
            raise

    def write(self, frame: Frame, masks: Sequence[np.ndarray | None] | None = None) -> None:
        """Draw ``masks`` (one per prompt; None keeps that prompt's previous mask) on ``frame``."""
        import av

        image = frame.image
        if image.shape != (self.info.height, self.info.width, 3) or image.dtype != np.uint8:
            raise InputError(
                f"frame {frame.index} is {image.shape} {image.dtype}, expected "
                f"({self.info.height}, {self.info.width}, 3) uint8: pass frames from the same source"
            )
        if masks is not None:
            for k, m in enumerate(_as_masks(masks, len(self.prompts), self.info.height, self.info.width, True)):
                if m is not None:
                    self._last[k] = m
        drawn = draw_overlay(image, self._last, self.prompts, self.colors, self.alpha, self._font)
        if self._t0 is None:
            self._t0 = frame.time
        pts = max(round((frame.time - self._t0) / self._tb), self._last_pts + 1)  # strictly increasing
        self._last_pts = pts
        self._last_time = frame.time - self._t0
        vf = av.VideoFrame.from_ndarray(drawn, format="rgb24")
        vf = vf.reformat(format=self._pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        vf.pts, vf.time_base = pts, self._tb
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.pump(self._t0, until=self._last_time)
        except av.FFmpegError as e:
            raise MediaError(f"encoding the overlay failed at frame {frame.index} ({e}): check free disk space") from e

    @property
    def audio_damage(self) -> Damage | None:
        """The damaged packets the transcoded sound track skipped (a :class:`~mutr.io.decode.Damage`),
        or None when the overlay decodes no sound (none, or a stream copy)."""
        if self._audio is None or self._audio.remux:
            return None
        return self._audio.damage

    def _finish(self) -> None:
        if self._t0 is None:
            raise MediaError(f"no frames were written to {self.path.name}: check the input and --start/--end")
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        if self._audio is not None:
            self._audio.finish(self._t0, until=self._last_time + 1.0 / max(self.info.fps, 1e-3))
        self._container.close()

    def _release(self) -> None:
        if self._audio is not None:
            self._audio.close()
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - half-written file is deleted next anyway
                pass


def draw_overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray | None],
    prompts: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    alpha: float = 0.5,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
) -> np.ndarray:
    """Blend each mask in its colour with an outline, and put the prompt text at its top-left."""
    import cv2

    out = image.copy()
    h, w = image.shape[:2]
    thickness = max(1, min(h, w) // 240)
    labels = []
    for mask, text, color in zip(masks, prompts, colors):
        if mask is None:
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # work on the mask's box only
        region, m = out[y0:y1, x0:x1], np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)
        # (1 - alpha) * pixel + alpha * colour inside the mask; cv2 is ~10x faster than NumPy here
        tinted = cv2.add(cv2.convertScaleAbs(region, alpha=1 - alpha), (*(alpha * v for v in color), 0.0))
        written = cv2.copyTo(tinted, m, region)
        if not np.shares_memory(written, out):  # cv2 made a new array instead of writing the view
            region[...] = written
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thickness, offset=(int(x0), int(y0)))
        labels.append((int(x0), int(y0), text, color))
    if labels:
        _draw_labels(out, labels, font or _label_font(w, h))
    return out


def _label_font(width: int, height: int):
    size = max(10, min(width, height) // 28)
    try:  # DejaVu covers far more scripts than Pillow's built-in font, where installed
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _draw_labels(out: np.ndarray, labels, font) -> None:
    """Draw text boxes on small crops of ``out`` (cheap even for 4K frames)."""
    h, w = out.shape[:2]
    pad = 2
    for x, y, text, color in labels:
        text = text if len(text) <= 48 else text[:47] + "…"
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
        bw, bh = min(right - left + 2 * pad, w), min(bottom - top + 2 * pad, h)
        x0 = min(max(0, x), w - bw)
        y0 = min(max(0, y - bh), h - bh)  # above the object, or inside it at the top edge
        crop = Image.fromarray(out[y0 : y0 + bh, x0 : x0 + bw])
        draw = ImageDraw.Draw(crop)
        draw.rectangle((0, 0, bw, bh), fill=color)
        ink = (0, 0, 0) if (0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]) > 150 else (255, 255, 255)
        draw.text((pad - left, pad - top), text, fill=ink, font=font)
        out[y0 : y0 + bh, x0 : x0 + bw] = np.asarray(crop)


def _pick_video_codec(codec: str) -> str:
    import av

    try:
        av.Codec(codec, "w")
        return codec
    except Exception:  # noqa: BLE001 - UnknownCodecError and friends
        warnings.warn(
            f"this FFmpeg build has no {codec} encoder; writing the overlay as MPEG-4 Part 2 instead "
            "(larger files): install PyAV wheels from PyPI for H.264",
            stacklevel=3,
        )
        return "mpeg4"


# -- PNG masks ----------------------------------------------------------------------------


class PngMaskWriter(_AtomicOutput):
    """``<path>/prompt-<k>/<index:05d>.png``: 0/255 grayscale PNG per processed frame and prompt."""

    _is_dir = True

    def __init__(self, path: str | Path, prompts: Sequence[str], *, overwrite: bool = False) -> None:
        super().__init__(path, overwrite=overwrite)
        self.prompts = list(prompts)
        self._shape: tuple[int, int] | None = None
        try:
            for k in range(len(self.prompts)):
                (self.tmp_path / f"prompt-{k}").mkdir()
            mapping = {f"prompt-{k}": text for k, text in enumerate(self.prompts)}
            (self.tmp_path / "prompts.json").write_text(json.dumps(mapping, indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            self.abort()
            raise MediaError(f"cannot write masks in {self.path.parent} ({e.strerror}): choose another --out") from e

    def write(self, index: int, masks: Sequence[np.ndarray | None]) -> None:
        """Save one mask per prompt for input frame ``index`` (None skips that prompt)."""
        if self._shape is None:
            first = next((np.asarray(m) for m in masks if m is not None), None)
            if first is None:
                return
            self._shape = first.shape[:2]
        for k, mask in enumerate(_as_masks(masks, len(self.prompts), *self._shape, allow_none=True)):
            if mask is None:
                continue
            image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
            try:
                image.save(self.tmp_path / f"prompt-{k}" / f"{index:05d}.png", optimize=False, compress_level=1)
            except OSError as e:
                raise MediaError(f"cannot write mask PNGs ({e.strerror}): check free space in {self.path.parent}") from e


# -- COCO RLE JSON ------------------------------------------------------------------------


class RleWriter(_AtomicOutput):
    """One JSON file of COCO-RLE masks per prompt and frame, streamed to disk as frames arrive."""

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        prompts: Sequence[str],
        *,
        overwrite: bool = False,
    ) -> None:
        super().__init__(path, overwrite=overwrite)
        self.info = info
        self.prompts = list(prompts)
        self._count = 0
        self._first = True
        try:
            self._file = open(self.tmp_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _finish/_release
        except OSError as e:
            self.abort()
            raise MediaError(f"cannot write {self.tmp_path} ({e.strerror}): choose a writable --out folder") from e
        video = {
            "path": str(info.path),
            "kind": info.kind,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "num_frames": info.num_frames,
            "duration": info.duration,
            "rotation": info.rotation,
        }
        prompt_list = [{"id": k, "text": t} for k, t in enumerate(self.prompts)]
        head = {"format": "mutr-rle", "version": 1, "video": video, "prompts": prompt_list}
        self._file.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "annotations": [')

    def write(
        self,
        index: int,
        time: float,
        masks: Sequence[np.ndarray],
        scores: Sequence[float | None] | None = None,
        boxes: Sequence[Sequence[float] | None] | None = None,
    ) -> None:
        """Add frame ``index`` at ``time`` s: a mask per prompt, optional scores and [x, y, w, h] boxes.

        Without a box, the mask's bounding box is stored ([0, 0, 0, 0] for an empty mask).
        """
        from pycocotools import mask as mask_utils

        n = len(self.prompts)
        checked = _as_masks(masks, n, self.info.height, self.info.width, allow_none=False)
        scores = list(scores) if scores is not None else [None] * n
        boxes = list(boxes) if boxes is not None else [None] * n
        if len(scores) != n or len(boxes) != n:
            raise InputError(f"got {len(scores)} scores and {len(boxes)} boxes for {n} prompts: pass one per prompt")
        parts = []
        for k, mask in enumerate(checked):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            box = boxes[k] if boxes[k] is not None else mask_utils.toBbox(rle).tolist()
            entry = {
                "prompt": k,
                "frame": int(index),
                "time": round(float(time), 6),
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")},
                "score": None if scores[k] is None else float(scores[k]),
                "bbox": [float(v) for v in box],
            }
            parts.append(json.dumps(entry, ensure_ascii=False))
        try:
            for part in parts:
                self._file.write(("\n" if self._first else ",\n") + part)
                self._first = False
        except OSError as e:
            raise MediaError(f"cannot write {self.tmp_path} ({e.strerror}): check free disk space") from e
        self._count += 1

    def _finish(self) -> None:
        self._file.write(f'\n], "num_frames": {self._count}}}\n')
        self._file.close()

    def _release(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()


def decode_rle(segmentation: dict) -> np.ndarray:
    """A ``segmentation`` entry of the RLE JSON -> [H, W] bool mask."""
    from pycocotools import mask as mask_utils

    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("utf-8")}
    with warnings.catch_warnings():  # pycocotools' own NumPy-2 deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)
