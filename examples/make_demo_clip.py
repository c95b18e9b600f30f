"""Write the bundled demo clip: examples/demo/clip.mp4 (synthetic shapes, one of them sounding).

    python examples/make_demo_clip.py [--out examples/demo/clip.mp4] [--overwrite]

The clip is a held-out synthetic clip (a seed the demo model never trained on) with three objects,
at the demo model's training size (160x160), two frames per second, and an AAC track holding the
tone of the sounding object. It prints the captions that name each object and which one sounds,
and writes them beside the clip as ``clip.json`` (the demo test reads the ground truth from the
same seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mutr.data.synthetic_video import DEMO_CLIP, demo_clip, write_clip_video  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "examples" / "demo" / "clip.mp4"))
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    clip = demo_clip()
    out = write_clip_video(clip, args.out, fps=DEMO_CLIP["fps"], overwrite=args.overwrite)
    info = {**DEMO_CLIP, "objects": [{"id": o.obj_id, "colour": o.colour, "shape": o.shape, "side": o.side,
                                      "captions": list(o.captions), "sounding": o.obj_id in clip.sounding}
                                     for o in clip.objects]}
    meta = Path(out).with_suffix(".json")
    meta.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} and {meta}")
    for o in info["objects"]:
        print(f"  object {o['id']}: {o['captions'][0]!r}{' (sounding)' if o['sounding'] else ''}")


if __name__ == "__main__":
    main()
