"""What every benchmark driver shares: progress events, scores, the driver interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from mutr.errors import InputError, MediaError

Stage = Literal["predict", "score", "package"]


@dataclass(frozen=True)
class EvalProgress:
    """One step of an evaluation: ``done`` of ``total`` items of ``stage`` (``item`` names the
    video; ``skipped`` when its predictions were already on disk)."""

    stage: Stage
    done: int
    total: int
    item: str = ""
    skipped: bool = False


ProgressFn = Callable[[EvalProgress], None]


def no_progress(_: EvalProgress) -> None:
    pass


@dataclass
class Scores:
    """A benchmark's numbers: dataset ``metrics``, per-group (DAVIS annotator set) metrics,
    per-video rows (the CSV; ``plot_key`` names the column the plot sorts) and extra rows."""

    metrics: dict[str, float]
    videos: list[dict[str, Any]]
    plot_key: str | None = None
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One atomically written piece of predictions: ``path`` exists only when it is complete."""

    video: int  # index into the benchmark's videos
    name: str
    path: Path


class Benchmark(ABC):
    """A dataset split in its official protocol: which units to predict, how to predict one
    video's units, how to score a predictions folder."""

    dataset: str
    modality: Literal["text", "audio"]
    protocol: str  # one line for metrics.json
    layout_hint: str  # the --predictions layout, for error messages
    unit_word = "videos"

    def __init__(self, data_root: Path, split: str) -> None:
        self.data_root, self.split = data_root, split

    @property
    @abstractmethod
    def video_names(self) -> list[str]: ...

    @abstractmethod
    def units(self, predictions: Path) -> list[Unit]:
        """Every unit of a complete predictions folder, grouped by video in dataset order."""

    def video_cost(self, video: int) -> int:
        """A video's share of the work, to balance processes: frames x (1 + references), since the
        backbone runs once per frame and the decoder once per frame and reference."""
        return 1

    @abstractmethod
    def predict(self, runner, video: int, units: list[Unit]) -> None:
        """Run the model on one video and write ``units`` (its missing ones), each atomically."""

    @abstractmethod
    def score(self, predictions: Path, metric_batch_size: int, progress: ProgressFn) -> Scores: ...

    def resolve_predictions(self, path: Path) -> Path:
        """The folder that holds the units (accepts an eval --out folder too)."""
        if (path / "run.json").is_file() and (path / "predictions").is_dir():
            return path / "predictions"
        return path

    def check_complete(self, predictions: Path) -> None:
        """Every unit exists, else one line naming the first missing path."""
        units = self.units(predictions)
        missing = [u for u in units if not u.path.exists()]
        if missing:
            raise InputError(f"missing {missing[0].path} ({len(missing)} of {len(units)} {self.unit_word} "
                             f"missing): --predictions must hold {self.layout_hint}")


def read_image(path: Path, layout_hint: str) -> Image.Image:
    """A prediction image, loaded; a missing or broken file is one line naming it."""
    if not path.is_file():
        raise InputError(f"missing {path}: --predictions must hold {layout_hint}")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise MediaError(f"cannot decode {path} ({e}); write it again") from e
