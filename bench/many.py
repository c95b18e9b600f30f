"""Benchmark many-video `mutr segment`: background decoding, and 1 vs 2 processes.

    python bench/many.py                      # both sections, 3 repeats (~5 min on 2 busy cores)
    python bench/many.py --only decoder       # or: processes
    python bench/many.py --device cuda --preset r50   # on a GPU machine

Eight short synthetic videos (640x360, 25 fps, 1.0 to 2.4 s, 25 to 60 frames, 340 in all), one
text prompt, all three outputs, random weights of ``--preset``. Default: the tiny preset with
the model input at ``--size 128`` (at the default 432 the tiny model still takes ~0.7 s per frame
on a CPU and decoding is noise); there the model is fast and decoding and writing dominate.

1. decoder   -- in one process (one PyTorch thread, so the decoder and writer threads have the
                other core): decode-only frames/s (decode + resize + normalise, what the model
                consumes) against end-to-end frames/s, and the share of wall time the model waits
                for input (``SegmentRun.times.input`` / wall), with decoding and writing inline
                (before: ``prefetch=0, background=False``) and in background threads (after).
2. processes -- the CLI on the folder: one process (PyTorch's default threads, and --threads 1)
                against ``torchrun --nproc_per_node 2`` (torchrun sets OMP_NUM_THREADS=1); wall
                time with start-up, and frames/s of the segmenting itself (frames over the busiest
                process's summed per-video seconds, from summary.json).

Timings on a shared machine are noisy: each figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from segment import _model, _tokenizer, make_video  # noqa: E402  (bench/segment.py)

SECONDS = [1.0 + 0.2 * i for i in range(8)]


def setup(work: Path, preset: str) -> tuple[Path, Path]:
    videos = work / "videos"
    videos.mkdir()
    for i, s in enumerate(SECONDS):
        make_video(videos / f"clip{i}.mp4", s, (640, 360), 25, audio=False)
    ck = work / "ck"
    model = _model(preset, work)
    model.save_pretrained(ck)
    shutil.copy(_tokenizer(work / "tokenizer.json"), ck / "tokenizer.json")
    return videos, ck


def decoder(videos: Path, ck: Path, device: str, repeats: int, size: int) -> dict:
    import torch

    from mutr import MUTR, Predictor
    from mutr.io.video import open_source
    from mutr.outputs import write_outputs
    from mutr.predictor import _model_inputs

    torch.set_num_threads(1)
    files = sorted(videos.glob("*.mp4"))
    predictor = Predictor(MUTR.from_pretrained(ck), device=device)
    rows: dict[str, list[dict]] = {"decode only": [], "before": [], "after": []}
    for _ in range(repeats):
        began, frames = time.perf_counter(), 0
        for f in files:
            for _item in _model_inputs(open_source(f), size, None):
                frames += 1
        rows["decode only"].append({"fps": frames / (time.perf_counter() - began)})
        for name, prefetch, background in (("before", 0, False), ("after", 8, True)):
            wall = waited = 0.0
            frames = 0
            with tempfile.TemporaryDirectory() as out:
                for k, f in enumerate(files):
                    began = time.perf_counter()
                    run = predictor.segment(f, texts=["the red square"], prefetch=prefetch, size=size)
                    summary = write_outputs(run, Path(out) / str(k), background=background)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    wall += time.perf_counter() - began
                    waited += run.times.input
                    frames += summary.frames
            rows[name].append({"fps": frames / wall, "wait": waited / wall})
    return {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}


def processes(videos: Path, ck: Path, device: str, repeats: int, work: Path, size: int, configs: list[str]) -> dict:
    exe = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    base = ["segment", str(videos), "-t", "the red square", "-c", str(ck), "--device", device, "--quiet",
            "--size", str(size)]
    mutr, torchrun = str(exe / "mutr"), str(exe / "torchrun")
    known = {"1": ("1 process, PyTorch's threads", [mutr], []),
             "1t1": ("1 process, --threads 1", [mutr], ["--threads", "1"]),
             "2": ("2 processes (torchrun: 1 thread each)", [torchrun, "--nproc_per_node", "2", mutr], [])}
    commands = {known[c][0]: (known[c][1], known[c][2]) for c in configs}
    rows: dict[str, list[dict]] = {name: [] for name in commands}
    for r in range(repeats):
        for k, (name, (cmd, extra)) in enumerate(commands.items()):
            out = work / f"out-{r}-{k}"
            began = time.perf_counter()
            proc = subprocess.run([*cmd, *base, *extra, "-o", str(out)], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - began
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            summary = json.loads((out / "summary.json").read_text())
            busy: dict[int, float] = {}
            for v in summary["results"]:
                busy[v["rank"]] = busy.get(v["rank"], 0.0) + v["seconds"]
            rows[name].append({"wall": wall, "fps_wall": summary["frames"] / wall,
                               "fps_segmenting": summary["frames"] / max(busy.values()),
                               "frames_per_rank": [sum(v["frames"] for v in summary["results"] if v["rank"] == k)
                                                   for k in sorted(busy)]})
            shutil.rmtree(out)
    return {name: {"wall_s": statistics.median(x["wall"] for x in runs),
                   "fps_wall": statistics.median(x["fps_wall"] for x in runs),
                   "fps_segmenting": statistics.median(x["fps_segmenting"] for x in runs),
                   "frames_per_rank": runs[0]["frames_per_rank"]} for name, runs in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("decoder", "processes"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="model input short side (mutr segment --size)")
    parser.add_argument("--configs", default="1,1t1,2",
                        help="processes section: 1 (one process, PyTorch's default threads), 1t1 (one process, "
                        "--threads 1), 2 (torchrun --nproc_per_node 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos, ck = setup(work, args.preset)
        report: dict = {"preset": args.preset, "size": args.size, "device": args.device,
                        "repeats": args.repeats, "cpus": os.cpu_count()}
        if args.only in (None, "decoder"):
            report["decoder"] = decoder(videos, ck, args.device, args.repeats, args.size)
            print(json.dumps(report["decoder"], indent=1), flush=True)
        if args.only in (None, "processes"):
            report["processes"] = processes(videos, ck, args.device, args.repeats, work, args.size,
                                             args.configs.split(","))
            print(json.dumps(report["processes"], indent=1), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
