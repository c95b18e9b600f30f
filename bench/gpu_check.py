"""The GPU numbers issue 9 asks for, in one run sized for a short device lease (~3 minutes on one GPU).

    python bench/gpu_check.py                       # cuda, r50 (random weights), 360x640
    python bench/gpu_check.py --device cpu --preset tiny --frames 16 --height 64 --width 96   # dry run

1. End-to-end FPS through ``Predictor.segment`` (decode, preprocess, model, postprocess to full-size
   masks; no files written) on a generated 360x640 synthetic clip (``write_clip_video``), one text
   prompt, 16-frame windows, for each ``--precisions`` (fast: bf16/fp16; exact: fp32). Best of
   ``--repeats`` after a warm-up.
2. Agreement on one 5-frame clip: GPU exact vs CPU exact (max |diff| per output), and each fast
   precision vs GPU exact (relative logit error, binary-mask mean IoU).

On the lent GPU machine (torch, transformers, typer, rich, OpenCV there; PyAV not), from the repo root:
here   ``echo /.whl/ >> .git/info/exclude; python -m pip download --no-deps --only-binary=:all:
       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl av==18.1.0``
there  (carry ``.whl``) ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
       && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/gpu_check.py``

Random weights make the masks meaningless but the cost real. The tokenizer is the demo model's
word-level one (no network on the device machine); r50's random RoBERTa does not care which ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from official_vs_mutr import OUTPUTS, mask_iou  # noqa: E402  (same folder)

from mutr import MUTR, MUTRConfig, Predictor  # noqa: E402
from mutr.data.synthetic import make_clip  # noqa: E402
from mutr.data.synthetic_video import write_clip_video  # noqa: E402

CAPTION = "the red circle"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fps(model: MUTR, video: Path, device: str, precision: str, size: int, window: int, repeats: int) -> dict:
    predictor = Predictor(model, device=device, precision=precision)
    times, frames = [], 0
    for i in range(repeats + 1):  # the first run warms up (kernel choice, allocator)
        sync(device)
        t0 = time.perf_counter()
        frames = sum(1 for _ in predictor.segment(video, CAPTION, size=size, window=window))
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return {"precision": precision, "frames": frames, "fps_best": round(frames / min(times), 1),
            "fps_median": round(frames / sorted(times)[len(times) // 2], 1)}


def agreement(model: MUTR, device: str, precisions: list[str], height: int, width: int) -> dict:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(1, 5, 3, height, width, generator=g)
    ids, am = model.tokenize([CAPTION])

    def run(dev: str, dtype: torch.dtype | None) -> dict:
        m = model.to(dev)
        with torch.inference_mode(), torch.autocast(dev.split(":")[0], dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = m(video.to(dev), input_ids=ids, attention_mask=am)
        return {k: getattr(out, k).float().cpu() for k in OUTPUTS}

    cpu = run("cpu", None)
    exact = run(device, None)
    report = {"exact_vs_cpu_max_abs": {k: float((exact[k] - cpu[k]).abs().max()) for k in OUTPUTS}}
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    for p in precisions:
        if p in dtypes:
            fast = run(device, dtypes[p])
            report[p] = {"finite": all(bool(torch.isfinite(v).all()) for v in fast.values()),
                         "logits_rel_err": float((fast["pred_logits"] - exact["pred_logits"]).norm()
                                                 / exact["pred_logits"].norm()),
                         "mask_iou_vs_exact": mask_iou(fast["pred_masks"], exact["pred_masks"])}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="r50")
    ap.add_argument("--frames", type=int, default=96, help="length of the generated video")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--precisions", default="bf16,fp16,fp32")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: pass --device cpu for a dry run")
    torch.manual_seed(0)
    config = MUTRConfig.preset(args.preset)
    tokenizer = str(ROOT / "examples" / "demo" / "checkpoint" / "tokenizer.json")
    config = replace(config, text_encoder=replace(config.text_encoder, tokenizer=tokenizer))
    model = MUTR(config).eval()
    precisions = [p for p in args.precisions.split(",") if p]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "preset": args.preset}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        # moving shapes as H.264 at 25 fps (what a user's clip costs to decode), through the demo's writer
        write_clip_video(make_clip(0, num_frames=args.frames, size=(args.height, args.width)), video, fps=25)
        for p in precisions:
            row = fps(model, video, args.device, p, min(args.height, args.width), args.window, args.repeats)
            print(json.dumps({"end_to_end": row}), flush=True)
    print(json.dumps({"agreement": agreement(model, args.device, precisions, args.height, args.width)}), flush=True)


if __name__ == "__main__":
    main()
