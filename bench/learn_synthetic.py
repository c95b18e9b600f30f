"""Can the training engine teach tiny-joint to follow a reference? Train on synthetic clips and score.

Trains ``tiny-joint`` with ``mutr.train.Trainer`` on synthetic text- and audio-referred clips
(configs/synthetic-tiny.yaml: 160 px frames, 3 frames per training clip), then segments held-out
clips (another seed, 5 frames each) and prints J, F and J&F (DAVIS measures, thresholded at 0.5) for:

* text   : a caption of one object ("the red circle", "the square on the left", ...)
* audio  : the tones of the sounding objects (target: their union)
* swapped: the same clips with the reference swapped to *another* object (text: another object's
  caption; audio: the other objects' tones). "J" is measured against the new referent, "J vs
  original" against the original one: a model that ignores the reference scores high on the
  second and low on the first.

Targets on 2 CPU cores in <= 10 minutes: J >= .90, J&F >= .85, swapped J >= .80.

    python bench/learn_synthetic.py [--config configs/synthetic-tiny.yaml] [--set optim.max_steps=800]
        [--train-minutes 9.75] [--eval-clips 32]
        [--export examples/demo/checkpoint]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mutr.data import collate  # noqa: E402
from mutr.data.common import ClipSample, make_target  # noqa: E402
from mutr.data.synthetic import SAMPLE_RATE, make_clip  # noqa: E402
from mutr.data.video_transforms import plain_transforms  # noqa: E402
from mutr.model.vggish import waveform_to_examples  # noqa: E402
from mutr.train.config import TrainConfig  # noqa: E402
from mutr.train.trainer import Trainer, TrainEvent  # noqa: E402
from mutr.train.validate import evaluate_clips  # noqa: E402

EVAL_SEED = 424242  # held-out clips: training uses seed [run.seed, index]


def _sample(clip, ids, caption=None, audio_clip=None) -> ClipSample:
    t = clip.frames.shape[0]
    target = make_target(clip.mask(ids), [True] * t, range(t), caption)
    frames, target = plain_transforms()([Image.fromarray(f) for f in clip.frames], target, np.random.default_rng(0))
    if caption is not None:
        return ClipSample(frames, target, caption=target.pop("caption"), source=caption)
    examples = waveform_to_examples(audio_clip.waveform(t), SAMPLE_RATE)[:t]
    audio = torch.from_numpy(examples)[:, None]
    return ClipSample(frames, target, audio=audio, audio_mask=torch.zeros(len(audio), dtype=torch.bool))


def eval_sets(n: int, size, num_frames: int):
    """(text, text swapped, swapped-vs-original text, audio, audio swapped, swapped-vs-original audio)."""
    sets: dict[str, list[ClipSample]] = {k: [] for k in
                                         ("text", "text swapped", "text swapped vs original",
                                          "audio", "audio swapped", "audio swapped vs original")}
    for i in range(n):
        rng = np.random.default_rng([EVAL_SEED, i, 1])
        clip = make_clip([EVAL_SEED, i], num_frames=num_frames, size=size, sounding="one", absent_prob=0.1)
        objs = clip.objects
        k = int(rng.integers(len(objs)))
        k2 = (k + 1 + int(rng.integers(len(objs) - 1))) % len(objs)
        cap, cap2 = objs[k].captions[int(rng.integers(4))], objs[k2].captions[int(rng.integers(4))]
        sets["text"].append(_sample(clip, objs[k].obj_id, caption=cap))
        sets["text swapped"].append(_sample(clip, objs[k2].obj_id, caption=cap2))
        sets["text swapped vs original"].append(_sample(clip, objs[k].obj_id, caption=cap2))

        aclip = make_clip([EVAL_SEED, i], num_frames=num_frames, size=size, sounding="some", absent_prob=0.1)
        heard = aclip.sounding
        rest = tuple(o.obj_id for o in aclip.objects if o.obj_id not in heard)
        if not rest:  # everything sounds: swap to one object alone
            rest = (aclip.objects[int(rng.integers(len(aclip.objects)))].obj_id,)
        swapped = dataclasses.replace(aclip, sounding=rest)
        sets["audio"].append(_sample(aclip, heard, audio_clip=aclip))
        sets["audio swapped"].append(_sample(aclip, rest, audio_clip=swapped))
        sets["audio swapped vs original"].append(_sample(aclip, heard, audio_clip=swapped))
    return sets


def _load() -> str:
    """1-minute load average: other processes on the machine slow training down."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthetic-tiny.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--eval-clips", type=int, default=32)
    p.add_argument("--eval-frames", type=int, default=5, help="frames per held-out clip (training may use fewer)")
    p.add_argument("--train-minutes", type=float, default=9.75,
                   help="stop training after this long (run.time_limit), leaving time for set-up and scoring")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="copy the trained model (config.json, model.safetensors, tokenizer.json) here and "
                        "write its scores to DIR/scores.json (how examples/demo/checkpoint is made)")
    p.add_argument("--overwrite", action="store_true", help="let --export replace an existing folder")
    args = p.parse_args(argv)

    export = Path(args.export) if args.export else None
    if export is not None and export.exists() and not args.overwrite:
        p.error(f"{export} exists: pass --overwrite to replace it")
    cfg = TrainConfig.from_yaml(args.config, [f"run.time_limit={args.train_minutes}", *args.set, "data.val=[]"])
    out = Path(args.out or tempfile.mkdtemp(prefix="mutr-learn-"))
    started, cpu_started = time.perf_counter(), time.process_time()

    def progress(e: TrainEvent) -> None:
        if e.kind == "step" and (e.step % 100 == 0 or e.step == e.total_steps):
            print(f"step {e.step:5d}/{e.total_steps}  loss {e.loss:7.3f}  lr {e.lr:.2e}  "
                  f"{e.it_per_s or 0:.2f} it/s  elapsed {time.perf_counter() - started:5.0f}s", flush=True)

    trainer = Trainer(cfg, out_dir=out, resume=False, callbacks=[progress])
    trainer.fit()
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    train_sets = [s for s in cfg.data.train if s.kind == "synthetic"]
    size = tuple(train_sets[0].options.get("size", (64, 64)))
    model = trainer.model.eval()
    results = {}
    t0 = time.perf_counter()
    for name, samples in eval_sets(args.eval_clips, size, args.eval_frames).items():
        r = evaluate_clips(model, samples, name=name, device=trainer.device,
                           collate=lambda s: collate(s, size_divisibility=1), avsbench=False)
        results[name] = {"J": r.j, "F": r.f, "J&F": r.jf}
    eval_s = time.perf_counter() - t0
    print(f"\ntrained {trainer.step} steps in {train_s:.0f} s ({train_cpu_s:.0f} CPU-s in the main process, load "
          f"average {_load()} at the end) on {cfg.run.threads or torch.get_num_threads()} threads "
          f"({size[0]}x{size[1]} px, T={cfg.data.num_frames}); evaluated {args.eval_clips} held-out clips "
          f"of {args.eval_frames} frames per row in {eval_s:.0f} s\n")
    print(f"{'reference':28s} {'J':>6s} {'F':>6s} {'J&F':>6s}")
    for name, r in results.items():
        print(f"{name:28s} {r['J']:6.3f} {r['F']:6.3f} {r['J&F']:6.3f}")
    summary = {"steps": trainer.step, "train_seconds": train_s, "train_cpu_seconds": train_cpu_s,
               "eval_seconds": eval_s, "size": list(size), "results": results, "run": str(out)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if export is not None:
        _export(out / "model", export, summary, cfg, args)
    return summary


def _export(model_dir: Path, export: Path, summary: dict, cfg: TrainConfig, args) -> None:
    """The run's exported model plus how it was made, swapped into place in one rename."""
    tmp = export.with_name(f".{export.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    record = {k: v for k, v in summary.items() if k != "run"}
    record["command"] = "python bench/learn_synthetic.py " + " ".join(sys.argv[1:])
    record["train_config"] = cfg.to_dict()
    record["eval_clips"], record["eval_frames"] = args.eval_clips, args.eval_frames
    (tmp / "scores.json").write_text(json.dumps(record, indent=2) + "\n")
    if export.exists():
        shutil.rmtree(export)
    tmp.rename(export)
    print(f"exported the model to {export}")


if __name__ == "__main__":
    main()
