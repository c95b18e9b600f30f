"""Benchmark `mutr segment`: end-to-end cost over the bare model, and memory vs video length.

    .venv/bin/python bench/segment.py               # everything (~10 min on 2 CPU cores)
    .venv/bin/python bench/segment.py --only speed  # or: rss, window

1. speed  -- r50 (random weights), a short 854x480 clip: seconds per frame of the whole pipeline
             (decode, preprocess, model, postprocess, overlay + PNG + RLE writers) against the model
             alone on the same windows (encode_video once per window, decode per prompt).
             Goal: end-to-end <= 1.15x model-only.
2. rss    -- tiny-joint, synthetic 426x240 videos with sound, 1 minute and 10 minutes, text + the
             video's own sound as prompts, all three outputs: peak RSS of each run, each in a fresh
             subprocess. Goal: 10-min / 1-min <= 1.1 (memory does not grow with length).
3. window -- r50 peak RSS for one window of 4, 8 and 16 frames at 854x480 (model input 768x432),
             each in a fresh subprocess: what a larger --window costs.

Random weights make the masks meaningless but the cost real. Timings on a shared machine are
noisy: the speed section alternates the two measurements and keeps the best of each, and also
reports, within each end-to-end run, total time over the time spent inside the model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import mutr from this checkout, installed or not


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _tokenizer(path: Path) -> Path:
    """A word-level tokenizer (<s> 0, <pad> 1, </s> 2, <unk> 3): random weights need no real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "the a red blue square circle moving object left right".split()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))
    return path


def _model(preset: str, workdir: Path):
    import torch

    from mutr import MUTR, MUTRConfig
    from mutr.model.text_encoder import load_tokenizer

    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset(preset)).eval()
    model._tokenizer = load_tokenizer(_tokenizer(workdir / "tokenizer.json"))  # random weights: any vocab
    return model


def make_video(path: Path, seconds: float, size: tuple[int, int], fps: int, audio: bool) -> Path:
    """Moving shapes (x264 ultrafast) and, with ``audio``, a 440 Hz tone in AAC."""
    import av

    w, h = size
    n = round(seconds * fps)
    yy, xx = np.mgrid[:h, :w]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        sr, hop, done = 16000, 1024, 0
        for i in range(n):
            img = np.full((h, w, 3), 90, np.uint8)
            x = (i * 4) % (w - 40)
            img[h // 4 : h // 4 + 40, x : x + 40] = (230, 30, 30)
            img[(yy - 3 * h // 4) ** 2 + (xx - (w - 1 - x)) ** 2 < 400] = (30, 30, 230)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
            while a is not None and done < (i + 1) * sr / fps:
                t = (done + np.arange(hop)) / sr
                af = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, done
                done += hop
                for p in a.encode(af):
                    c.mux(p)
        for s in [v, a] if a is not None else [v]:
            for p in s.encode(None):
                c.mux(p)
    return path


# ---------------------------------------------------------------------------------- workers
def worker_pipeline(args) -> dict:
    """The `mutr segment` pipeline on one video; prints seconds and peak RSS."""
    import torch

    from mutr.outputs import write_outputs
    from mutr.predictor import Predictor

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    model = _model(args.preset, work)
    rss_model = _peak_rss_mb()
    spent = [0.0]  # seconds inside the model during this run, to compare within one process

    def timed(method):
        def call(*a, **kw):
            t = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t
        return call

    model.encode_video, model.decode = timed(model.encode_video), timed(model.decode)
    predictor = Predictor(model, device="cpu")
    audio = "from-video" if args.audio else None
    run = predictor.segment(args.video, texts=["the red square"], audio=audio, window=args.window, size=args.size)
    began = time.perf_counter()
    summary = write_outputs(run, work / f"out-{os.getpid()}", overwrite=True)
    return {"frames": summary.frames, "seconds": time.perf_counter() - began, "model_seconds": spent[0],
            "rss_after_model_mb": rss_model, "peak_rss_mb": _peak_rss_mb()}


def worker_model_only(args) -> dict:
    """The same windows through the model alone, inputs decoded and preprocessed beforehand."""
    import torch

    from mutr.io.transforms import preprocess
    from mutr.io.video import open_source
    from mutr.predictor import _cat_visual, _tail_visual

    torch.set_num_threads(args.threads)
    model = _model(args.preset, Path(args.workdir))
    video = preprocess([f.image for f in open_source(args.video)], args.size)  # [T, 3, h, w]
    window, overlap = args.window, args.window // 4
    with torch.inference_mode():
        ref = model.encode_reference(texts=["the red square"])
        began = time.perf_counter()
        carry, i = None, 0
        while i < len(video):
            n = window - (carry.num_frames if carry is not None else 0)
            if getattr(model.backbone, "temporal", False):  # the predictor's rule: a window's frames are encoded together
                k = carry.num_frames if carry is not None else 0
                visual = model.encode_video(video[None, i - k : i + n])
            else:
                visual = model.encode_video(video[None, i : i + n])
                if carry is not None:
                    visual = _cat_visual(carry, visual)
            out = model.decode(visual, ref)
            out.pred_masks.sum()  # materialise
            carry = _tail_visual(visual, min(overlap, visual.num_frames)) if overlap else None
            i += n
    return {"frames": len(video), "seconds": time.perf_counter() - began, "peak_rss_mb": _peak_rss_mb()}


def _run_worker(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()
                                                            if v is not False]
    cmd = [c[:-5] if c.endswith("=True") else c for c in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- sections
def bench_speed(work: Path, threads: int, frames: int, window: int, repeats: int, preset: str) -> None:
    video = make_video(work / "speed.mp4", frames / 25, (854, 480), 25, audio=True)
    print(f"[speed] {preset}, {frames} frames 854x480 (model input 768x432), window {window}, 1 text prompt, "
          f"{threads} threads; best of {repeats}", flush=True)
    best_e2e = best_model = float("inf")
    shares = []
    for _ in range(repeats):
        m = _run_worker("model", preset=preset, video=video, window=window, size=432, threads=threads, workdir=work)
        e = _run_worker("pipeline", preset=preset, video=video, window=window, size=432, threads=threads, workdir=work)
        best_model = min(best_model, m["seconds"] / m["frames"])
        best_e2e = min(best_e2e, e["seconds"] / e["frames"])
        shares.append(e["seconds"] / e["model_seconds"])
        print(f"  model only {m['seconds'] / m['frames']:.3f} s/frame   end to end {e['seconds'] / e['frames']:.3f} "
              f"s/frame (of which in the model {e['model_seconds'] / e['frames']:.3f})", flush=True)
    print(f"  => model only {best_model:.3f} s/frame, end to end {best_e2e:.3f} s/frame, "
          f"ratio {best_e2e / best_model:.3f} (goal <= 1.15)", flush=True)
    print(f"  => within one run (immune to load changes between runs): end to end / time in the model = "
          f"{min(shares):.3f}", flush=True)


def bench_rss(work: Path, threads: int, minutes: tuple[float, float], fps: int, size: int) -> None:
    print(f"[rss] tiny-joint, 426x240 at {fps} fps with sound, text + audio-of-the-video prompts, model input "
          f"short side {size}, overlay+png+rle, {threads} thread(s), fresh process each", flush=True)
    results = []
    for m in minutes:
        video = make_video(work / f"long-{m:g}min.mp4", m * 60, (426, 240), fps, audio=True)
        r = _run_worker("pipeline", preset="tiny-joint", video=video, window=16, size=size, threads=threads,
                        workdir=work, audio=True)
        results.append(r)
        print(f"  {m:g} min: {r['frames']} frames in {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(after building the model {r['rss_after_model_mb']:.0f} MB)", flush=True)
        for out in work.glob("out-*"):
            shutil.rmtree(out)
    print(f"  => peak RSS ratio {minutes[1]:g} min / {minutes[0]:g} min = "
          f"{results[1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.3f} (goal <= 1.1)", flush=True)


def bench_window(work: Path, threads: int, windows: tuple[int, ...]) -> None:
    print(f"[window] r50 peak RSS for one window, 854x480 (model input 768x432), {threads} threads", flush=True)
    for w in windows:
        video = make_video(work / f"win{w}.mp4", w / 25, (854, 480), 25, audio=False)
        r = _run_worker("pipeline", preset="r50", video=video, window=w, size=432, threads=threads, workdir=work)
        extra = r["peak_rss_mb"] - r["rss_after_model_mb"]
        print(f"  window {w:3d}: peak RSS {r['peak_rss_mb']:.0f} MB ({extra:.0f} MB "
              f"over the built model), {r['seconds'] / r['frames']:.2f} s/frame", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["speed", "rss", "window"], action="append")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--speed-frames", type=int, default=6)
    p.add_argument("--speed-window", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--speed-preset", default="r50")
    p.add_argument("--minutes", type=float, nargs=2, default=(1.0, 10.0))
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--rss-size", type=int, default=128, help="model input short side for the rss section")
    p.add_argument("--windows", type=int, nargs="+", default=(4, 8, 16))
    # worker mode (internal)
    p.add_argument("--worker", choices=["pipeline", "model"])
    p.add_argument("--preset")
    p.add_argument("--video")
    p.add_argument("--window", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--workdir")
    p.add_argument("--audio", action="store_true")
    args = p.parse_args()
    if args.worker:
        import warnings

        warnings.simplefilter("ignore")
        out = worker_pipeline(args) if args.worker == "pipeline" else worker_model_only(args)
        print(json.dumps(out))
        return
    only = set(args.only or ["speed", "rss", "window"])
    with tempfile.TemporaryDirectory(prefix="mutr-bench-") as tmp:
        work = Path(tmp)
        if "speed" in only:
            bench_speed(work, args.threads, args.speed_frames, args.speed_window, args.repeats, args.speed_preset)
        if "rss" in only:
            bench_rss(work, 1, tuple(args.minutes), args.fps, args.rss_size)  # memory, not speed: 1 thread
        if "window" in only:
            bench_window(work, args.threads, tuple(args.windows))


if __name__ == "__main__":
    main()
