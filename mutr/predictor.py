"""Segment a video of any length: ``Predictor.segment`` streams one result per frame.

Windows
-------
Frames are decoded one at a time and run through the model in windows of ``window`` processed
frames (default :data:`DEFAULT_WINDOW` = 16). Consecutive windows share ``overlap`` frames
(default ``window // 4``, so 4): each window adds ``window - overlap`` new frames (12 by default,
a multiple of MTI's 4-frame windows, so the shared frames fall into the same MTI windows in both
clips). A window's results are yielded as soon as it is done, each frame from the first window
that contains it; nothing is kept from earlier windows except the shared frames' features (their
model inputs for temporal backbones, below), so memory depends on the window, never on the
video's length.

Why 16: MTI relates frames within 4-frame windows (shifted by 2), so 16 frames give it four
windows and the video queries over half a second of context at 25 fps; the official Ref-DAVIS
path uses 64-frame clips. Peak memory grows linearly with the window: r50 in fp32 at 768x432 needs
about 0.5 GB per frame on top of the model (``bench/segment.py`` measured peak RSS 3.8 / 5.5 /
9.8 GB for windows of 4 / 8 / 16 on a CPU), so 16 fits a 16 GB machine or a 12 GB GPU; use a
smaller ``window`` on less memory and a larger one where memory allows.

One backbone pass per window for every prompt: ``encode_video`` runs once per window, on its new
frames only (the shared frames' per-frame features are kept from the previous window), and
``decode`` (early fusion onward, which depends on the reference) runs once per prompt. A text
prompt is encoded once per run; a sound prompt once per window, from the audio under its frames
(:mod:`mutr.audio_windows`).

Frames are decoded, resized and normalised in a background thread (:class:`mutr.io.prefetch.Prefetch`,
``prefetch`` frames ahead; PyAV, PIL and torch release the GIL), so the model waits for input only
when decoding is slower than the model; ``SegmentRun.times`` says how long it waited.

Temporal backbones (``model.backbone.temporal``: Video-Swin) mix the frames of the clip they run
on, so a shared frame's features from the previous window are not its features in this one. The
rule for them: each window's backbone pass runs over all of that window's frames (the shared ones
again; only their model inputs are carried), so a window's outputs equal one
``model(window_frames)`` forward over its frames, as the official model computes a clip. The
backbone then runs ``window / (window - overlap)`` times per new frame (4/3 with the defaults).

Linking windows
---------------
Each window picks one query per prompt, like the official per-clip protocol. The first window
takes the official choice, ``argmax_q score_q``. Every later window takes

    argmax_q  score_q + IoU_q * score_prev

where ``score_q`` is the official score (sigmoid of the class logits, mean over frames, max over
classes), ``IoU_q`` the agreement of query q's binary masks with the previous selection's masks on
the shared frames (intersections and unions summed over those frames, at the model's stride-4
resolution) and ``score_prev`` the previous selection's score. A query that continues the
previous object inherits the previous choice's confidence in proportion to how well it agrees: a
confidently chosen object stays chosen while another query briefly outscores it, and a weak
choice (for example a distractor picked before the referred object appeared) gives way as soon as
a clearly better candidate shows up. With ``overlap=0`` windows are independent.

Outputs
-------
``segment`` returns a :class:`SegmentRun`: a generator whose ``total`` is the expected number of
results (for progress bars), yielding a :class:`FrameResult` per processed frame: masks at the
frame's own size (the mask logits are resized directly to it, as the official scripts do), the
selected query's window score, and its box as ``[x, y, w, h]`` in pixels (COCO, as in the RLE
JSON; ``boxes_xyxy`` gives corners). :func:`mutr.postprocess.predict_clip` (also
``Predictor.predict_clip``) is the exact official per-clip protocol (one forward, one query per
clip), returning probabilities.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from mutr.errors import CheckpointError, ConfigError, InputError, MediaError
from mutr.hub import DEMO_ENV, demo_checkpoint_dir  # noqa: F401 - re-exported: mutr.predictor's public name
from mutr.io.prefetch import Prefetch
from mutr.io.transforms import INFERENCE_SIZE, resize_short_side, resized_size, to_model_input
from mutr.io.video import FrameSource, VideoInfo, open_source
from mutr.model.mutr import MIN_SIDE, MUTR, VisualFeatures
from mutr.model.reference import ReferenceTokens
from mutr.postprocess import (THRESHOLD, ClipPrediction, boxes_to_xywh, link_query, mask_agreement, predict_clip,
                              query_scores, upsample_logits)

if TYPE_CHECKING:
    from mutr.audio_windows import AudioWindows

__all__ = ["DEFAULT_PREFETCH", "DEFAULT_WINDOW", "ClipPrediction", "FrameResult", "Predictor", "RunTimes",
           "SegmentRun", "demo_checkpoint_dir", "load_checkpoint", "predict_clip"]

DEFAULT_WINDOW = 16
DEFAULT_PREFETCH = 8  # decoded frames kept ready ahead of the model (memory: 8 frames + their inputs)
MAX_INPUT_LONG_SIDE = 2048  # model input cap, reached only by frames wider than ~4.7:1 at size 432
FROM_VIDEO = "from-video"
Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, eq=False)
class FrameResult:
    """One processed frame. P = number of prompts; H, W = the frame's size.

    ``masks`` [P, H, W] bool; ``scores`` [P] (the selected query's window score); ``boxes``
    [P, 4] ``[x, y, w, h]`` pixels; ``probs`` [P, H, W] float32 sigmoid when requested;
    ``queries`` the selected query per prompt; ``window`` the window it came from; ``image`` the
    decoded frame [H, W, 3] uint8 RGB.
    """

    index: int
    time: float
    image: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: tuple[int, ...]
    window: int
    probs: np.ndarray | None = None

    @property
    def boxes_xyxy(self) -> np.ndarray:
        """[P, 4] ``[x0, y0, x1, y1]`` pixels."""
        out = self.boxes.copy()
        out[:, 2:] += out[:, :2]
        return out


@dataclass
class RunTimes:
    """Where a run's time went, in seconds: ``input`` waiting for decoded, resized frames (with
    the background decoder: only the time the model found its queue empty), ``model`` in the
    model and post-processing. The consumer's own time (writing outputs) is in neither."""

    input: float = 0.0
    model: float = 0.0


class SegmentRun(Generator):
    """The generator ``Predictor.segment`` returns, with what a progress bar needs up front.

    ``total``: the estimated number of results (None if the container does not say); ``source``,
    ``info`` and ``prompts`` describe the run; ``audio`` is the sound prompt's
    :class:`~mutr.audio_windows.AudioWindows` (None without one), whose ``damage`` says which
    damaged packets were skipped; ``times`` (:class:`RunTimes`) fills as it runs. Iterate it, or
    ``close()`` it to stop early.
    """

    def __init__(self, gen: Generator, source: FrameSource, prompts: list[str],
                 audio: AudioWindows | None = None, times: RunTimes | None = None) -> None:
        self._gen, self.source, self.prompts, self.audio = gen, source, prompts, audio
        self.times = times if times is not None else RunTimes()

    @property
    def info(self) -> VideoInfo:
        return self.source.info

    @property
    def total(self) -> int | None:
        return self.source.expected_frames

    def send(self, value):  # noqa: D102 - Generator protocol
        return self._gen.send(value)

    def throw(self, *args):  # noqa: D102
        return self._gen.throw(*args)

    def close(self) -> None:  # noqa: D102
        self._gen.close()


@dataclass
class _Carry:
    """What a window passes on: its last frames, their features (``visual``; per-frame backbones)
    or their model inputs (``video`` [k, 3, h, w]; temporal backbones, which encode them again),
    and per prompt the selected query's binary stride-4 masks on them and its score."""

    frames: list
    visual: VisualFeatures | None
    video: Tensor | None
    masks: list[Tensor]
    scores: list[float]


class Predictor:
    """Runs a MUTR model on videos. Moves ``model`` to ``device`` and puts it in eval mode.

    ``device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N". ``precision``: "fp32"
    (exact), or "bf16"/"fp16" through autocast (weights stay fp32). ``threads`` sets
    ``torch.set_num_threads`` (process-wide).
    """

    def __init__(self, model: MUTR, device: str = "auto", precision: Precision = "fp32",
                 threads: int | None = None) -> None:
        if precision not in _DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.precision = precision
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bfloat16 support: pass --precision fp16 or fp32")
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike | None = None, **kwargs) -> "Predictor":
        """Load a checkpoint folder or downloaded registry name (None: the bundled demo model)."""
        model, _ = load_checkpoint(checkpoint)
        return cls(model, **kwargs)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision], enabled=self.precision != "fp32")

    # ------------------------------------------------------------------ streaming
    def segment(
        self,
        source: str | os.PathLike | FrameSource,
        texts: Sequence[str] | str = (),
        audio: str | os.PathLike | None = None,
        *,
        start: float | None = None,
        end: float | None = None,
        stride: int = 1,
        window: int = DEFAULT_WINDOW,
        overlap: int | None = None,
        size: int = INFERENCE_SIZE,
        max_size: int | None = None,
        return_probs: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> SegmentRun:
        """Segment each text prompt (and the sound prompt) in ``source``; yields :class:`FrameResult`.

        ``source`` is a video, an image folder, an image, or a ``FrameSource`` (then ``start``,
        ``end``, ``stride`` and ``max_size`` are the source's). ``audio``: a media file whose sound
        is the prompt, or ``"from-video"`` for the video's own track. ``start``/``end`` seconds,
        ``stride`` every k-th frame, ``max_size`` downscales frames whose long side exceeds it
        (outputs then have that size); ``size`` is the model input's short side. Inputs are
        checked here, before the first frame is decoded; frames are decoded as results are drawn,
        in a background thread up to ``prefetch`` frames ahead of the model (0: in this thread).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts and audio is None:
            raise InputError("nothing to segment: give a text prompt (--text) or a sound (--audio/--audio-from-video)")
        if not isinstance(window, int) or window < 1:
            raise InputError(f"window must be a whole number of frames >= 1, got {window!r}: pass --window 16")
        overlap = window // 4 if overlap is None else overlap
        if not isinstance(overlap, int) or not 0 <= overlap < window:
            raise InputError(f"overlap must be between 0 and window - 1 = {window - 1}, got {overlap!r}")
        if not isinstance(size, int) or size < MIN_SIDE:
            raise InputError(f"size must be a whole number >= {MIN_SIDE}, got {size!r}: pass the default 432")
        if isinstance(source, FrameSource):
            if (start, end, stride, max_size) != (None, None, 1, None):
                raise InputError("start/end/stride/max_size belong to open_source() when a FrameSource is given")
        else:
            source = open_source(source, start, end, stride, max_size=max_size)
        model = self.model
        if texts and getattr(model, "text_encoder", True) is None:
            raise InputError(f"this {model.config.name} model has no text encoder: pass --audio or --audio-from-video")
        sound, prompts = None, list(texts)
        if audio is not None:
            if getattr(model, "audio_encoder", True) is None:
                raise InputError(f"this {model.config.name} model takes no sound prompt: pass --text instead")
            sound, label = self._audio_windows(source, audio)
            prompts.append(label)
        input_max = _input_max_size(source.info, size)
        with torch.inference_mode(), self._autocast():
            refs = [model.encode_reference(texts=[t]) for t in texts]
        if not isinstance(prefetch, int) or prefetch < 0:
            raise InputError(f"prefetch must be a whole number of frames >= 0, got {prefetch!r}")
        times = RunTimes()
        gen = self._stream(source, refs, sound, window, overlap, size, input_max, return_probs, prefetch, times)
        return SegmentRun(gen, source, prompts, sound, times)

    @staticmethod
    def _audio_windows(source: FrameSource, audio: str | os.PathLike):
        from mutr.audio_windows import AudioWindows

        info = source.info
        if str(audio) == FROM_VIDEO:
            if info.kind != "video" or not info.has_audio:
                raise MediaError(f"{info.path.name} has no audio stream; pass --audio FILE or --text")
            # the audio under a frame is at start_time + frame.time on the container's clock
            return AudioWindows(info.path, info.start_time), "audio of the video"
        return AudioWindows(audio), f"audio: {Path(audio).name}"  # the file's start = the first frame

    def _stream(self, source: FrameSource, refs: list[ReferenceTokens], sound, window: int, overlap: int,
                size: int, input_max: int | None, return_probs: bool, prefetch: int,
                times: RunTimes) -> Iterator[FrameResult]:
        carry: _Carry | None = None
        pending: list = []
        count = 0
        frame_time = source.stride / source.info.fps  # what one processed frame stands for
        inputs = _model_inputs(source, size, input_max)
        if prefetch:
            inputs = Prefetch(inputs, prefetch)
        clock = time.perf_counter
        try:
            while True:
                began = clock()
                item = next(inputs, None)
                times.input += clock() - began
                if item is None:
                    break
                pending.append(item)
                if len(pending) + (len(carry.frames) if carry else 0) >= window:
                    began = clock()
                    results, carry = self._window(pending, carry, refs, sound, frame_time, overlap, return_probs,
                                                  count)
                    times.model += clock() - began
                    pending = []
                    count += 1
                    yield from results
            if pending:
                began = clock()
                results, carry = self._window(pending, carry, refs, sound, frame_time, overlap, return_probs, count)
                times.model += clock() - began
                yield from results
            if sound is not None:
                sound.finish()
        finally:
            inputs.close()

    def _window(self, pending: list, carry: _Carry | None, refs: list[ReferenceTokens], sound, frame_time: float,
                overlap: int, return_probs: bool, number: int) -> tuple[list[FrameResult], _Carry | None]:
        model, device = self.model, self.device
        frames = [f for f, _ in pending]
        video = torch.stack([x for _, x in pending])[None].to(device)  # [1, n, 3, h, w]
        k = len(carry.frames) if carry is not None else 0  # frames shared with the previous window
        all_frames = (carry.frames if carry is not None else []) + frames
        height, width = frames[0].image.shape[:2]
        # a temporal backbone's features depend on the clip: re-encode the shared frames
        temporal = bool(getattr(getattr(model, "backbone", None), "temporal", False))
        if temporal and carry is not None:
            video = torch.cat([carry.video, video[0]])[None]  # [1, k + n, 3, h, w]
        with torch.inference_mode(), self._autocast():
            visual = model.encode_video(video)
            if carry is not None and not temporal:
                visual = _cat_visual(carry.visual, visual)
            if sound is not None:
                span = sound.examples(all_frames[0].time, all_frames[-1].time + frame_time)
                examples = torch.from_numpy(span)[None, :, None]  # [1, N, 1, 96, 64]
                refs = [*refs, model.encode_reference(audio=examples.to(device))]
            picks = [_pick(model.decode(visual, ref), carry, p, k, overlap, (height, width), return_probs)
                     for p, ref in enumerate(refs)]
        scores = np.asarray([x.score for x in picks], np.float32)
        results = [
            FrameResult(index=f.index, time=f.time, image=f.image, masks=np.stack([x.masks[i] for x in picks]),
                        scores=scores.copy(), boxes=np.stack([x.boxes[i] for x in picks]),
                        queries=tuple(x.query for x in picks), window=number,
                        probs=np.stack([x.probs[i] for x in picks]) if return_probs else None)
            for i, f in enumerate(frames)
        ]
        keep = min(overlap, len(all_frames))
        new_carry = None
        if keep:
            new_carry = _Carry(all_frames[len(all_frames) - keep :], None if temporal else _tail_visual(visual, keep),
                               video[0, video.shape[1] - keep :].clone() if temporal else None,
                               [x.tail for x in picks], [x.score for x in picks])
        return results, new_carry

    # ------------------------------------------------------------------ one clip
    def predict_clip(self, frames: Sequence, *, text: str | None = None, audio: np.ndarray | Tensor | None = None,
                     size: int = INFERENCE_SIZE, max_size: int | None = None) -> ClipPrediction:
        """:func:`predict_clip` on this predictor's device and precision."""
        with torch.inference_mode(), self._autocast():
            return predict_clip(self.model, frames, text=text, audio=audio, size=size, max_size=max_size)


# ---------------------------------------------------------------------- helpers
def _model_inputs(source: FrameSource, size: int, input_max: int | None) -> Generator[tuple, None, None]:
    """(frame, model input [3, h, w]) per selected frame: decode, resize, normalise."""
    for frame in source.iter_frames():
        image = resize_short_side(frame.image, size, input_max)
        yield frame, to_model_input([image])[0]


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; refuses CUDA on a machine without it."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: pass --device auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA GPU here: pass --device cpu "
                              "(or auto), or install a CUDA build of PyTorch and check nvidia-smi")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"there is no {name} (this machine has {torch.cuda.device_count()} GPU(s)): "
                              "pass --device cuda")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported: pass --device auto, cpu or cuda")
    return dev


def load_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[MUTR, bool]:
    """(model, is_demo): a checkpoint folder or registry name, or the demo model for None."""
    from mutr.hub import resolve_checkpoint

    if checkpoint is None:
        path = demo_checkpoint_dir()
        if not (path / "config.json").is_file():
            raise CheckpointError(f"no --checkpoint given and the bundled demo model is not at {path}: pass "
                                  "--checkpoint NAME_OR_PATH (`mutr download --list` shows the registered weights)")
        return MUTR.from_pretrained(path), True
    return MUTR.from_pretrained(resolve_checkpoint(checkpoint)), False


def _input_max_size(info: VideoInfo, size: int) -> int | None:
    """The model input's long-side cap: None, or MAX_INPUT_LONG_SIDE for very elongated frames."""
    w, h = resized_size(info.width, info.height, size)
    if max(w, h) <= MAX_INPUT_LONG_SIDE or size >= MAX_INPUT_LONG_SIDE:
        return None
    w, h = resized_size(info.width, info.height, size, MAX_INPUT_LONG_SIDE)
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{info.path.name} frames are {info.width}x{info.height}, too elongated to segment "
                         "(the model input would be under 32 pixels high): crop the video first")
    warnings.warn(f"{info.path.name} frames are {info.width}x{info.height}; the model sees them at {w}x{h} "
                  f"(long side capped at {MAX_INPUT_LONG_SIDE})", stacklevel=3)
    return MAX_INPUT_LONG_SIDE


@dataclass
class _Pick:
    query: int
    score: float
    masks: list[np.ndarray]  # per new frame [H, W] bool
    probs: list[np.ndarray] | None
    boxes: np.ndarray  # [n, 4] xywh px
    tail: Tensor  # [keep, h, w] bool: binary stride-4 masks of the last frames, for the next window


def _pick(out, carry: _Carry | None, p: int, k: int, overlap: int, size: tuple[int, int],
          return_probs: bool) -> _Pick:
    """Choose prompt p's query in this window (linked to the previous one through the k shared
    frames) and turn its outputs for the new frames into full-size masks and pixel boxes."""
    logits, low = out.pred_logits[0].float(), out.pred_masks[0].float()  # [T, Q, K], [T, Q, h, w]
    scores = query_scores(logits)
    agree = mask_agreement(carry.masks[p], low[:k].sigmoid() > THRESHOLD) if k else None
    q = link_query(scores, agree, carry.scores[p] if k else None)
    sel = low[:, q]  # [T, h, w] the chosen query's mask logits
    probs = [upsample_logits(sel[i : i + 1], size)[0].sigmoid() for i in range(k, len(sel))]  # frame by frame
    boxes = boxes_to_xywh(out.pred_boxes[0, k:, q], size[1], size[0]).cpu().numpy()
    keep = min(overlap, len(sel))
    return _Pick(q, float(scores[q]), [(x > THRESHOLD).cpu().numpy() for x in probs],
                 [x.cpu().numpy() for x in probs] if return_probs else None, boxes,
                 (sel[len(sel) - keep :].sigmoid() > THRESHOLD).clone())


def _cat_visual(a: VisualFeatures, b: VisualFeatures) -> VisualFeatures:
    """Frames of ``a`` then ``b`` (batch 1): every field is per frame except the image sizes."""
    cat = lambda xs, ys: [torch.cat([x, y]) for x, y in zip(xs, ys)]  # noqa: E731
    return VisualFeatures(1, a.num_frames + b.num_frames, torch.cat([a.res2, b.res2]), cat(a.proj, b.proj),
                          cat(a.masks, b.masks), cat(a.poses, b.poses), b.image_sizes)


def _tail_visual(v: VisualFeatures, n: int) -> VisualFeatures:
    """The last ``n`` frames, copied so the rest of the window's features can be freed."""
    tail = lambda xs: [x[-n:].clone() for x in xs]  # noqa: E731
    return VisualFeatures(1, n, v.res2[-n:].clone(), tail(v.proj), tail(v.masks), tail(v.poses), v.image_sizes)
