"""Ref-YouTube-VOS: the official inference (inference_ytvos.py) and the server's submission zip.

The valid set has no public GT: the CodaLab server (competition 3282) scores the zip. Per video
and expression: the whole video in one forward pass, one query for the video, its mask logits
resized to the original size, sigmoid > 0.5.

Predictions layout (``--predictions DIR``; the model run writes ``<out>/predictions``)::

    DIR/Annotations/<video>/<exp_id>/<frame>.png     "L" PNG, 0 background, 255 object

``DIR`` may also be the ``Annotations`` folder itself. The zip holds exactly these files under
``Annotations/`` (every listed frame of every expression of every valid video), as the official
``zip_folder`` writes them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from mutr.data.ref_youtube_vos import RefYouTubeVOSEval
from mutr.errors import InputError
from mutr.evaluate.common import Benchmark, EvalProgress, ProgressFn, Scores, Unit, read_image
from mutr.evaluate.store import staged_dir, staged_file

ANNOTATIONS = "Annotations"
THRESHOLD = 0.5


class YTVOSBenchmark(Benchmark):
    dataset = "ref-youtube-vos"
    modality = "text"
    protocol = ("Ref-YouTube-VOS: whole video in one forward pass per expression, one query per video, "
                "0/255 PNGs zipped for the CodaLab server (no local metrics: the valid GT is not public)")
    splits = ("valid", "test")
    layout_hint = "Annotations/<video>/<exp_id>/<frame>.png 0/255 masks"

    def __init__(self, data_root: Path, split: str) -> None:
        super().__init__(data_root, split)
        self.data = RefYouTubeVOSEval(data_root, split)

    @property
    def video_names(self) -> list[str]:
        return [v.video_id for v in self.data]

    def resolve_predictions(self, path: Path) -> Path:
        path = super().resolve_predictions(path)
        return path.parent if path.name == ANNOTATIONS and not (path / ANNOTATIONS).is_dir() else path

    def units(self, predictions: Path) -> list[Unit]:
        return [Unit(i, v.video_id, predictions / ANNOTATIONS / v.video_id) for i, v in enumerate(self.data)]

    def files(self, predictions: Path) -> list[tuple[Path, str]]:
        """(file, name in the zip) of every expected mask, in a fixed order."""
        out = []
        for v in self.data:
            for exp_id in v.expressions:
                for frame in v.frame_names:
                    arc = f"{ANNOTATIONS}/{v.video_id}/{exp_id}/{frame}.png"
                    out.append((predictions / arc, arc))
        return out

    def check_complete(self, predictions: Path) -> None:
        super().check_complete(predictions)
        for path, _ in self.files(predictions):
            if not path.is_file():
                raise InputError(f"missing {path}: --predictions must hold {self.layout_hint} for every listed frame")

    def video_cost(self, video: int) -> int:
        v = self.data[video]
        return len(v.frame_names) * (1 + len(v.expressions))

    def predict(self, runner, video: int, units: list[Unit]) -> None:
        v = self.data[video]
        (unit,) = units
        clip = runner.encode_video(v.load_frames())
        with staged_dir(unit.path) as tmp:
            for exp_id, text in v.expressions.items():
                masks = runner.mask_logits(clip, runner.text(text)).sigmoid() > THRESHOLD  # [T, H, W]
                (tmp / exp_id).mkdir()
                for frame, m in zip(v.frame_names, masks.numpy()):
                    Image.fromarray(m.astype(np.uint8) * 255).save(tmp / exp_id / f"{frame}.png")

    def score(self, predictions: Path, metric_batch_size: int, progress: ProgressFn) -> Scores:
        """No metrics; per video the fraction of pixels predicted as object (0 flags empty masks)."""
        rows = []
        for i, v in enumerate(self.data):
            fractions = []
            for exp_id in v.expressions:
                for frame in v.frame_names:
                    path = predictions / ANNOTATIONS / v.video_id / exp_id / f"{frame}.png"
                    fractions.append(float(np.mean(np.asarray(read_image(path, self.layout_hint)) > 0)))
            rows.append({"video": v.video_id, "expressions": len(v.expressions), "frames": len(v.frame_names),
                         "foreground": float(np.mean(fractions)) if fractions else 0.0})
            progress(EvalProgress("score", i + 1, len(self.data), v.video_id))
        return Scores({}, rows, None, info={"num_expressions": sum(len(v.expressions) for v in self.data)})

    def package(self, predictions: Path, zip_path: Path, progress: ProgressFn) -> None:
        """The server's zip: Annotations/<video>/<exp_id>/<frame>.png (deflated, as zip_folder)."""
        files = self.files(predictions)
        with staged_file(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, (path, arc) in enumerate(files):
                zf.write(path, arc)
                if (k + 1) % 100 == 0 or k + 1 == len(files):
                    progress(EvalProgress("package", k + 1, len(files)))
