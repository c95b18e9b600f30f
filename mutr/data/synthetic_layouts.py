"""Writers that lay synthetic clips out exactly as the real benchmarks are stored (datasets.md).

Kept apart from the scene generator so each layout's file names can be read in one place.
Frames of YTVOS/DAVIS are JPEGs (as released) while GT is lossless: palette PNGs of object ids,
or binary PNGs for AVSBench (S4 0/255 grey, MS3 a palette PNG of indices 0/255, which is what
the MS3 loader's ToTensor needs to read 0/1).
"""

from __future__ import annotations

import csv
import json
import pickle
import wave
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mutr.data.synthetic import SAMPLE_RATE, SyntheticClip, video_name
from mutr.model.vggish import waveform_to_examples

AVS_SECONDS = 5.0


def palette() -> list[int]:
    """The PASCAL/DAVIS colour map (id 1 dark red, 2 green, ...), flattened for ``putpalette``."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def _save_palette(ids: np.ndarray, path: Path) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _save(array: np.ndarray, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _dump_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _write_frames(clip: SyntheticClip, folder: Path, names: list[str], annotations: Path | None) -> None:
    for t, name in enumerate(names):
        _save(clip.frames[t], folder / f"{name}.jpg", quality=95)
        if annotations is not None:
            _save_palette(clip.ids[t], annotations / f"{name}.png")


def write_ytvos(root: Path, clips: dict[str, list[SyntheticClip]]) -> Path:
    """train/{JPEGImages,Annotations,meta.json}, valid/JPEGImages, meta_expressions/{train,valid,test};
    frames named 00000, 00005, ... (every 5th frame of 30 fps); the last valid video is "test"."""
    for split, videos in clips.items():
        metas, exps = {}, {}
        for i, clip in enumerate(videos):
            vid = video_name(split, i)
            names = [f"{5 * t:05d}" for t in range(len(clip.frames))]
            ann = root / split / "Annotations" / vid if split == "train" else None
            _write_frames(clip, root / split / "JPEGImages" / vid, names, ann)
            expressions = {}
            for obj in clip.objects:
                for cap in obj.captions[:2]:
                    entry = {"exp": cap, "obj_id": str(obj.obj_id)} if split == "train" else {"exp": cap}
                    expressions[str(len(expressions))] = entry
            exps[vid] = {"expressions": expressions, "frames": names}
            metas[vid] = {"objects": {str(o.obj_id): {"category": o.shape, "frames": [
                n for t, n in enumerate(names) if (clip.ids[t] == o.obj_id).any()]} for o in clip.objects}}
        if split == "train":
            _dump_json({"videos": metas}, root / "train" / "meta.json")
        _dump_json({"videos": exps}, root / "meta_expressions" / split / "meta_expressions.json")
        if split == "valid":
            test = {v: exps[v] for v in list(exps)[-1:]} if len(exps) > 1 else {}
            _dump_json({"videos": test}, root / "meta_expressions" / "test" / "meta_expressions.json")
    return root


def write_davis(root: Path, clips: dict[str, list[SyntheticClip]]) -> Path:
    """The converted Ref-DAVIS layout: <split>/{JPEGImages,Annotations,meta.json} and
    meta_expressions/<split>; four expressions per object, ids 4k..4k+3 (annotator sets)."""
    for split, videos in clips.items():
        metas, exps = {}, {}
        for i, clip in enumerate(videos):
            vid = video_name(split, i)
            names = [f"{t:05d}" for t in range(len(clip.frames))]
            _write_frames(clip, root / split / "JPEGImages" / vid, names, root / split / "Annotations" / vid)
            objs = sorted(clip.objects, key=lambda o: str(o.obj_id))
            exps[vid] = {"expressions": {str(4 * k + a): {"exp": o.captions[a], "obj_id": str(o.obj_id)}
                                         for k, o in enumerate(objs) for a in range(4)}, "frames": names}
            metas[vid] = {"objects": {str(o.obj_id): {"category": o.shape} for o in objs}}
        _dump_json({"videos": metas}, root / split / "meta.json")
        _dump_json({"videos": exps}, root / "meta_expressions" / split / "meta_expressions.json")
    return root


def _write_wav(wave_f32: np.ndarray, path: Path) -> np.ndarray:
    """16-bit mono PCM at 16 kHz (what moviepy wrote); returns the int16 samples stored."""
    pcm = np.clip(np.round(wave_f32 * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())
    return pcm


def _write_audio(clip: SyntheticClip, wav: Path, pkl: Path) -> None:
    """The wav and the log-mel pickle the AVSBench preprocessing makes from it (``pickle.dump``
    of a [5, 1, 96, 64] tensor with requires_grad, as torchvggish returns it)."""
    pcm = _write_wav(clip.waveform(AVS_SECONDS), wav)
    examples = torch.from_numpy(waveform_to_examples(pcm / 32768.0, SAMPLE_RATE))[:, None]
    pkl.parent.mkdir(parents=True, exist_ok=True)
    with open(pkl, "wb") as f:
        pickle.dump(examples.requires_grad_(True), f)


def _write_csv(rows: list[list[str]], header: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def write_avsbench_s4(root: Path, clips: dict[str, list[SyntheticClip]]) -> Path:
    """Single-source/s4_meta_data.csv + s4_data/{visual_frames,gt_masks,audio_wav,audio_log_mel}
    /<split>/<category>/...; train has only <name>_1.png masks. The category is the sounding
    object's name."""
    base, rows = root / "Single-source" / "s4_data", []
    for split, videos in clips.items():
        for i, clip in enumerate(videos):
            name = video_name(split, i)
            category = clip.objects[clip.sounding[0] - 1].name
            rows.append([name, "0", category, split])
            gt = clip.mask(clip.sounding)
            for t in range(5):
                _save(clip.frames[t], base / "visual_frames" / split / category / name / f"{name}_{t + 1}.png")
                if split != "train" or t == 0:
                    _save((gt[t] * 255).astype(np.uint8), base / "gt_masks" / split / category / name / f"{name}_{t + 1}.png")
            _write_audio(clip, base / "audio_wav" / split / category / f"{name}.wav",
                         base / "audio_log_mel" / split / category / f"{name}.pkl")
    _write_csv(rows, ["name", "start", "category", "split"], root / "Single-source" / "s4_meta_data.csv")
    return root


def write_avsbench_ms3(root: Path, clips: dict[str, list[SyntheticClip]]) -> Path:
    """Multi-sources/ms3_meta_data.csv + ms3_data/visual_frames/<name>/<name>.mp4_<i>.png (no
    split folder) and {gt_masks,audio_wav,audio_log_mel}/<split>/...; all five frames annotated."""
    base, rows = root / "Multi-sources" / "ms3_data", []
    for split, videos in clips.items():
        for i, clip in enumerate(videos):
            name = video_name(split, i)
            rows.append([name, split])
            gt = clip.mask(clip.sounding)
            for t in range(5):
                _save(clip.frames[t], base / "visual_frames" / name / f"{name}.mp4_{t + 1}.png")
                _save_palette((gt[t] * 255).astype(np.uint8), base / "gt_masks" / split / name / f"{name}_{t + 1}.png")
            _write_audio(clip, base / "audio_wav" / split / f"{name}.wav", base / "audio_log_mel" / split / f"{name}.pkl")
    _write_csv(rows, ["video_id", "split"], root / "Multi-sources" / "ms3_meta_data.csv")
    return root


WRITERS: dict[str, Callable[[Path, dict[str, list[SyntheticClip]]], Path]] = {
    "ytvos": write_ytvos, "davis": write_davis,
    "avsbench-s4": write_avsbench_s4, "avsbench-ms3": write_avsbench_ms3,
}
