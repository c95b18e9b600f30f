"""Per-module time breakdown of one MUTR forward (random weights), and what an extra prompt costs.

    python bench/op_profile.py --preset r50 --frames 5 --height 360 --width 640 --threads 2
    python bench/op_profile.py --fast            # bf16 autocast (the fast mode)
    python bench/op_profile.py --ops 25          # also the 25 most expensive operators (torch.profiler)

Module times come from forward pre/post hooks (wall clock, exclusive of nothing: a parent's time
includes its children). The rows are MUTR's top-level stages plus the sub-modules named in
``--depth``; "other" is what the top-level modules do not cover (glue in ``MUTR.decode``).

The issue asked for ``bench/profile.py``; a script of that name shadows the standard library's
``profile`` module when run as ``python bench/profile.py`` and breaks importing transformers'
backbones, hence ``op_profile.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict


def _hooks(model, depth: int, times: dict[str, float]):
    handles, starts = [], {}
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth or name.startswith("text_encoder"):
            continue

        def pre(mod, args, name=name):
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            times[name] += time.perf_counter() - starts.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="r50")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--depth", type=int, default=3, help="module-name depth to report (1 = top level)")
    ap.add_argument("--fast", action="store_true", help="bf16 autocast (MUTR's fast mode)")
    ap.add_argument("--plain", action="store_true",
                    help="the plain module-by-module path (mutr.model.kernels.reference_kernels)")
    ap.add_argument("--ops", type=int, default=0, help="also print the N most expensive operators")
    ap.add_argument("--min-share", type=float, default=0.5, help="hide rows under this %% of the total")
    args = ap.parse_args()

    import torch

    from mutr import MUTR, MUTRConfig
    from mutr.model.kernels import reference_kernels

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset(args.preset)).eval()
    video = torch.randn(1, args.frames, 3, args.height, args.width)
    vocab = model.text_encoder.vocab_size if model.text_encoder is not None else 50265
    ids = torch.tensor([[0, 627, 1104, 2335, 4494, 15, 5, 235, 9, 5, 2170, 2]]) % vocab
    def ctx():
        stack = contextlib.ExitStack()
        if args.fast:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        stack.enter_context(reference_kernels(args.plain))
        return stack

    with torch.inference_mode():
        ref = model.encode_reference(ids)
        with ctx():
            model(video, reference=ref)  # warm-up
    times: dict[str, float] = defaultdict(float)
    handles = _hooks(model, args.depth, times)
    totals = []
    with torch.inference_mode(), ctx():
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(video, reference=ref)
            totals.append(time.perf_counter() - start)
    for h in handles:
        h.remove()
    total = sum(totals)
    print(f"preset={args.preset} clip={args.frames}x{args.height}x{args.width} threads={args.threads} "
          f"mode={'bf16 autocast' if args.fast else 'fp32 exact'}{' (plain kernels)' if args.plain else ''}")
    print(f"forward: best {min(totals):.3f} s = {min(totals) / args.frames:.3f} s/frame "
          f"(runs: {', '.join(f'{t:.2f}' for t in totals)})")
    top = sum(v for k, v in times.items() if "." not in k)
    print(f"{'module':58s} {'s/forward':>10s} {'share':>7s}")
    for name, secs in sorted(times.items()):
        share = 100 * secs / total
        if share < args.min_share:
            continue
        indent = "  " * name.count(".")
        print(f"{indent + name:58s} {secs / args.repeats:10.3f} {share:6.1f}%")
    print(f"{'other (glue in decode / encode_video)':58s} {(total - top) / args.repeats:10.3f} "
          f"{100 * (total - top) / total:6.1f}%")

    # What one more prompt costs: Predictor runs encode_video once per window for all prompts
    # and decode once per prompt (early fusion makes everything after the backbone prompt-specific).
    enc, dec = [], []
    with torch.inference_mode(), ctx():
        for _ in range(args.repeats):
            start = time.perf_counter()
            visual = model.encode_video(video)
            mid = time.perf_counter()
            model.decode(visual, ref)
            enc.append(mid - start)
            dec.append(time.perf_counter() - mid)
    one = min(enc) + min(dec)
    print(f"prompts: encode_video {min(enc) / args.frames:.3f} s/frame once per window, decode "
          f"{min(dec) / args.frames:.3f} s/frame per prompt: each extra prompt adds {100 * min(dec) / one:.0f}% "
          f"of a one-prompt forward")

    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), ctx(), profile(activities=[ProfilerActivity.CPU]) as prof:
            model(video, reference=ref)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
