"""Speed and agreement of mutr against the official MUTR, same weights, same inputs, interleaved.

    python bench/official_vs_mutr.py --sizes 5x360x640,5x432x768 --threads 2 --repeats 3
    python bench/official_vs_mutr.py --sizes 36x432x768 --repeats 2 --modes exact,fast

The official model (OpenGVLab/MUTR, released configuration: box refinement, binary head; backbone
``--backbone``, ResNet-50 by default) runs
in a worker subprocess, normally another virtual environment with torchvision
(``--official-python``, or ``$MUTR_OFFICIAL_PYTHON``), built by the harness helpers in
``--harness`` (``$MUTR_OFFICIAL_HARNESS``, default ../shared/tools/official_mutr) from the checkout
in ``--official-repo`` (``$MUTR_OFFICIAL_REPO``). Its weights are the official initialisation,
perturbed as the harness does (so that sampling offsets depend on the input), seeded; mutr loads
the same state_dict through ``mutr.convert``. Without an official checkout (``--no-official``)
only mutr is timed.

Each repeat runs, in turn: official, mutr exact (fp32), mutr fast (bf16 autocast on CPU), so
that load from other processes hits all of them alike; min and median are reported. The clip
is one video [T, 3, H, W] with a 12-token caption, as the official inference runs it (the text
encoder is inside the timed forward for both). Reported per size and mode: seconds per frame,
speed-up over the official model, achieved GFLOP/s (the mutr forward's FLOPs, counted by
``torch.utils.flop_counter``, over the time) against this machine's GEMM peak measured here, and
agreement: max |mutr - official| per output (exact); relative logit error and binary-mask IoU
against mutr exact (fast).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKEN_IDS = [0, 627, 1104, 2335, 4494, 15, 5, 235, 9, 5, 2170, 2]
OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks")
PRESETS = {"resnet50": "r50", "resnet101": "r101", "swin_l_p4w7": "swin-l", "video_swin_t_p4w7": "video-swin-t",
           "video_swin_s_p4w7": "video-swin-s", "video_swin_b_p4w7": "video-swin-b",
           "convnext_large": "convnext-l", "convmae_base": "convmae-b"}

# Runs in the official environment: builds the official model, writes its state_dict, then
# serves {"video": path, "out": path} requests (one JSON line each) with {"seconds": s}.
WORKER = r'''
import argparse, json, os, sys, time
sys.path.insert(0, os.environ["BENCH_HARNESS"])
import run_official as ro
repo, commit = ro.resolve_repo(os.environ["MUTR_OFFICIAL_REPO"])
ro.import_torchvision_tolerantly()
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
sys.path.insert(0, str(repo))
ro.install_msda_fallback()
import opts
from models import build_model
ro.patch_msda_function()
tok = ro.FixedTableTokenizer({ro.HARNESS_CAPTION: json.loads(os.environ["BENCH_TOKENS"])})
ro.patch_downloads(tok, "sdpa")
parser = argparse.ArgumentParser(parents=[opts.get_args_parser()], add_help=False)
args = parser.parse_args(["--device", "cpu", "--backbone", os.environ["BENCH_BACKBONE"]] + ro.RELEASED_FLAGS)
args.masks = True
ro.patch_backbone_pretrained(args.backbone, args)
seed = int(os.environ["BENCH_SEED"])
torch.manual_seed(seed)
model, _, _ = build_model(args)
model.eval()
ro.perturb_weights(model, seed + 2)
torch.save(model.state_dict(), os.environ["BENCH_STATE"])
print(json.dumps({"ready": True, "commit": commit, "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    video = torch.load(req["video"], weights_only=True)
    target = [{"size": torch.tensor(list(video.shape[-2:]))}]
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model([video.clone()], [ro.HARNESS_CAPTION], target)
        secs = time.perf_counter() - t0
    if req.get("out"):
        torch.save({k: out[k] for k in ("pred_logits", "pred_boxes", "pred_masks")}, req["out"])
    import resource
    print(json.dumps({"seconds": secs, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}),
          flush=True)
'''


class Official:
    """The official model in a worker process (its own venv); one forward per request."""

    def __init__(self, python: str, repo: str, harness: str, threads: int, seed: int, state_path: Path,
                 backbone: str):
        env = dict(os.environ, MUTR_OFFICIAL_REPO=repo, BENCH_HARNESS=harness, BENCH_THREADS=str(threads),
                   BENCH_BACKBONE=backbone,
                   BENCH_SEED=str(seed), BENCH_STATE=str(state_path), BENCH_TOKENS=json.dumps(TOKEN_IDS),
                   PYTHONWARNINGS="ignore")
        # run from an empty directory: the official checkout's top-level names must win
        self.proc = subprocess.Popen([python, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=tempfile.gettempdir())
        self.info = self._reply()

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the official worker died (see its stderr above)")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, video_path: Path, out_path: Path | None) -> float:
        self.proc.stdin.write(json.dumps({"video": str(video_path), "out": str(out_path) if out_path else ""})
                              + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.peak_rss_gib = reply["peak_rss_gib"]
        return reply["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def gemm_peak(threads: int) -> dict[str, float]:
    """Best GFLOP/s of a 2048^3 matrix product (fp32 and bf16) on this many threads."""
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        best = float("inf")
        for _ in range(6):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        peaks[str(dtype).replace("torch.", "")] = 2 * 2048**3 / best / 1e9
    return peaks


def count_flops(model, video: torch.Tensor, ids: torch.Tensor) -> float:
    """FLOPs of one forward: matrix products, convolutions and attention, as
    ``torch.utils.flop_counter`` counts them (its module tracker does not run under no_grad)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            counter = flop_registry.get(packet)
            if counter is not None:
                Count.total += counter(*args, **kwargs, out_val=out)
            elif packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                q, k = args[0], args[1]  # [B, H, Lq, E], [B, H, Lk, E]: two matrix products
                Count.total += 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
            return out

    with torch.no_grad(), Count():
        model(video, input_ids=ids)
    return Count.total


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean IoU of binary masks (logit > 0) over every (frame, query) mask; empty/empty counts 1."""
    a, b = (a > 0).flatten(-2), (b > 0).flatten(-2)
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5x360x640,5x432x768", help="comma list of TxHxW clips")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="exact,fast",
                    help="mutr modes: exact (fp32), fast (bf16 autocast), plain (fp32 with "
                         "mutr.model.kernels.reference_kernels(): the module-by-module formulation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="resnet50",
                    help="official --backbone name (resnet50, swin_l_p4w7, video_swin_t_p4w7, ...)")
    ap.add_argument("--official-python", default=os.environ.get("MUTR_OFFICIAL_PYTHON", sys.executable))
    ap.add_argument("--official-repo", default=os.environ.get("MUTR_OFFICIAL_REPO"))
    ap.add_argument("--harness", default=os.environ.get(
        "MUTR_OFFICIAL_HARNESS", str(ROOT.parent / "shared" / "tools" / "official_mutr")))
    ap.add_argument("--no-official", action="store_true", help="time mutr only (random weights of the preset)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra forward per size)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from mutr import MUTR, MUTRConfig
    from mutr.convert import convert_state_dict
    from mutr.model.kernels import reference_kernels

    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="mutr_bench_"))
    official = None
    if not args.no_official:
        if not args.official_repo:
            sys.exit("set --official-repo / MUTR_OFFICIAL_REPO (or pass --no-official)")
        print(f"building the official model in {args.official_python} ...", flush=True)
        official = Official(args.official_python, args.official_repo, args.harness, args.threads, args.seed,
                            tmp / "state_dict.pt", args.backbone)
        state, config = convert_state_dict(torch.load(tmp / "state_dict.pt", weights_only=True))
        model = MUTR(config)
        model.load_state_dict_checked(state)
        (tmp / "state_dict.pt").unlink()
    else:
        torch.manual_seed(args.seed)
        model = MUTR(MUTRConfig.preset(PRESETS[args.backbone]))
    model.eval()
    ids = torch.tensor([TOKEN_IDS])
    peaks = gemm_peak(args.threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?") \
        if Path("/proc/cpuinfo").exists() else "?"
    header = {"backbone": args.backbone, "cpu": cpu, "threads": args.threads, "torch": torch.__version__,
              "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
              "official": official.info if official else None}
    print(json.dumps(header))
    results = []
    try:
        for t, h, w in sizes:
            g = torch.Generator().manual_seed(args.seed + 1)
            video = torch.randn(t, 3, h, w, generator=g)
            torch.save(video, tmp / "video.pt")
            flops = None if args.no_flops else count_flops(model, video[None], ids)
            runs = {"official": [], **{m: [] for m in modes}}
            outs = {}

            def mutr_run(mode: str) -> float:
                ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "fast" else torch.autocast(
                    "cpu", enabled=False)
                with torch.inference_mode(), ctx, reference_kernels(mode == "plain"):
                    t0 = time.perf_counter()
                    out = model(video[None], input_ids=ids)
                    secs = time.perf_counter() - t0
                outs[mode] = {k: getattr(out, k).float() for k in OUTPUTS}
                return secs

            # warm-up (first calls allocate and pick kernels), keeping the outputs to compare
            if official:
                official.run(tmp / "video.pt", tmp / "official_out.pt")
            for m in modes:
                mutr_run(m)
            for _ in range(args.repeats):
                if official:
                    runs["official"].append(official.run(tmp / "video.pt", None))
                for m in modes:
                    runs[m].append(mutr_run(m))
            row = {"frames": t, "height": h, "width": w,
                   "gflop_per_frame": None if flops is None else round(flops / t / 1e9, 1)}
            base = min(runs["official"]) if official else None
            for name, times in runs.items():
                if not times:
                    continue
                best, med = min(times), statistics.median(times)
                entry = {"s_per_frame_min": round(best / t, 3), "s_per_frame_median": round(med / t, 3),
                         "runs_s": [round(x, 2) for x in times]}
                if base:
                    entry["speedup_vs_official"] = round(base / best, 2)
                    entry["speedup_median"] = round(statistics.median(runs["official"]) / med, 2)
                if flops:
                    gflops = flops / best / 1e9
                    peak = peaks["bfloat16" if name == "fast" else "float32"]
                    entry["gflops"] = round(gflops, 1)
                    entry["of_gemm_peak"] = round(gflops / peak, 2)
                row[name] = entry
            if official:
                ref = torch.load(tmp / "official_out.pt", weights_only=True)
                for mode in ("exact", "plain"):
                    if mode in outs:
                        row[mode]["max_abs_diff_vs_official"] = {
                            k: float((outs[mode][k] - ref[k]).abs().max()) for k in OUTPUTS}
                if "fast" in outs:
                    row["fast"]["mask_iou_vs_official"] = round(mask_iou(outs["fast"]["pred_masks"],
                                                                         ref["pred_masks"]), 4)
            if "fast" in outs and "exact" in outs:
                ex, fa = outs["exact"], outs["fast"]
                row["fast"]["logits_rel_err_vs_exact"] = float(
                    (fa["pred_logits"] - ex["pred_logits"]).norm() / ex["pred_logits"].norm())
                row["fast"]["masks_rel_err_vs_exact"] = float(
                    (fa["pred_masks"] - ex["pred_masks"]).norm() / ex["pred_masks"].norm())
                row["fast"]["mask_iou_vs_exact"] = round(mask_iou(fa["pred_masks"], ex["pred_masks"]), 4)
                row["fast"]["finite"] = bool(all(torch.isfinite(v).all() for v in fa.values()))
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if official:
            official.close()
    print()
    print(f"{'clip':>12s} {'impl':>9s} {'s/frame min':>11s} {'median':>7s} {'x official':>10s} "
          f"{'GFLOP/s':>8s} {'of peak':>7s}  agreement")
    for row in results:
        clip = f"{row['frames']}x{row['height']}x{row['width']}"
        for name in ("official", *modes):
            e = row.get(name)
            if not e:
                continue
            agree = ""
            if "max_abs_diff_vs_official" in e:
                agree = "max|d| " + " ".join(f"{k[5:]} {v:.1e}" for k, v in e["max_abs_diff_vs_official"].items())
            if "mask_iou_vs_exact" in e:
                agree = (f"IoU vs exact {e['mask_iou_vs_exact']:.4f}, logits rel {e['logits_rel_err_vs_exact']:.1e}"
                         + ("" if e["finite"] else ", NOT FINITE"))
            print(f"{clip:>12s} {name:>9s} {e['s_per_frame_min']:11.3f} {e['s_per_frame_median']:7.3f} "
                  f"{e.get('speedup_vs_official', float('nan')):10.2f} {e.get('gflops', float('nan')):8.1f} "
                  f"{e.get('of_gemm_peak', float('nan')):7.2f}  {agree}")
    print(f"GEMM peak here: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"({args.threads} threads; {cpu}); FLOPs are mutr's (the official model does ~1% more)")
    import resource

    # whole-process peaks: each process holds its model, the clip and the activations of every size run
    header["peak_rss_gib"] = {"mutr": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                              "official": round(official.peak_rss_gib, 2) if official else None}
    print(f"peak RSS: mutr {header['peak_rss_gib']['mutr']} GiB, official {header['peak_rss_gib']['official']} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
