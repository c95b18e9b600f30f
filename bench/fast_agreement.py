"""Fast mode against exact mode on a *trained* model: binary-mask IoU and logit error.

    python bench/fast_agreement.py                       # the bundled demo model, synthetic clips
    python bench/fast_agreement.py --checkpoint DIR --clips 16 --precision bf16 --device cpu

Random weights (bench/official_vs_mutr.py) put many logits near 0, where any rounding flips a
pixel; a trained model's decisions are what users see. For each held-out synthetic clip (another
seed than training, 5 frames at the checkpoint's training size) and each reference (a caption of
every object, and the clip's sound), the selected query's mask logits are computed in exact mode
(fp32) and in fast mode (autocast); reported: mean and minimum IoU of the two binary masks, the
relative L2 error of the logits, and whether every output is finite.
"""

from __future__ import annotations

import argparse
import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the bundled demo model)")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--size", type=int, default=160, help="frame size of the synthetic clips")
    p.add_argument("--precision", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from mutr.data.synthetic import SAMPLE_RATE, make_clip
    from mutr.io.transforms import to_model_input
    from mutr.model.vggish import waveform_to_examples
    from mutr.postprocess import select_query
    from mutr.predictor import load_checkpoint

    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    model = model.to(args.device).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    ious, errors, finite = [], [], True
    for i in range(args.clips):
        clip = make_clip([515151, i], num_frames=5, size=args.size, sounding="one")
        video = to_model_input(list(clip.frames))[None].to(args.device)
        refs = [model.encode_reference(texts=[o.captions[0]]) for o in clip.objects]
        audio = torch.from_numpy(waveform_to_examples(clip.waveform(5), SAMPLE_RATE)[:5])[None, :, None]
        with torch.inference_mode():
            refs.append(model.encode_reference(audio=audio.to(args.device)))
            for ref in refs:
                exact = model(video, reference=ref)
                with torch.autocast(torch.device(args.device).type, dtype=dtype):
                    fast = model(video, reference=ref)
                q, _ = select_query(exact.pred_logits[0])
                a, b = exact.pred_masks[0, :, q].float(), fast.pred_masks[0, :, q].float()
                finite &= bool(torch.isfinite(fast.pred_masks).all() and torch.isfinite(fast.pred_logits).all())
                errors.append(float((a - b).norm() / a.norm().clamp(min=1e-12)))
                ma, mb = (a > 0).cpu().numpy(), (b > 0).cpu().numpy()
                union = np.logical_or(ma, mb).sum()
                ious.append(1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union))
    result = {"references": len(ious), "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
              "logits_rel_err_mean": float(np.mean(errors)), "finite": finite,
              "precision": args.precision, "device": args.device, "checkpoint": args.checkpoint or "demo"}
    print(f"{result['checkpoint']}: {result['references']} references on {args.clips} held-out clips, "
          f"{args.precision} autocast vs fp32 on {args.device}: mask IoU mean {result['mask_iou_mean']:.4f} "
          f"(min {result['mask_iou_min']:.4f}), logit relative error {result['logits_rel_err_mean']:.2e}, "
          f"finite: {finite}")
    return result


if __name__ == "__main__":
    main()
