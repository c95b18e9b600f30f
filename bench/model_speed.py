"""Seconds per frame and peak memory of one MUTR forward (random weights), the speed baseline.

    python bench/model_speed.py --preset r50 --frames 5 --height 360 --width 640 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from mutr import MUTR, MUTRConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="r50")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset(args.preset)).eval().to(args.device)
    video = torch.randn(1, args.frames, 3, args.height, args.width, device=args.device)
    ids = torch.tensor([[0, 627, 1104, 2335, 4494, 15, 5, 235, 9, 5, 2170, 2]], device=args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        ref = model.encode_reference(ids)
        model(video, reference=ref)  # warm-up
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(video, reference=ref)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    best = min(times)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"preset={args.preset} clip={args.frames}x{args.height}x{args.width} threads={args.threads} "
          f"device={args.device}")
    print(f"seconds/frame: best {best / args.frames:.3f}  median {sorted(times)[len(times) // 2] / args.frames:.3f}")
    print(f"peak RSS: {rss_gib:.2f} GiB" + (f"  peak CUDA: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                             if args.device == "cuda" else ""))


if __name__ == "__main__":
    main()
