"""Synthetic datasets written once per session, in every real layout (shared by tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutr.data.synthetic import SyntheticClip, layout_clip, write_synthetic


class SyntheticRoots:
    """``roots(layout)`` writes (once) and returns a dataset root; ``roots.clip(...)`` is its exact GT."""

    seed = 3
    num_videos = 3
    num_frames = 7
    sizes = {"ytvos": (48, 80), "davis": (48, 80), "avsbench-s4": (40, 40), "avsbench-ms3": (40, 40)}

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory, self.roots = factory, {}

    def __call__(self, layout: str) -> Path:
        if layout not in self.roots:
            self.roots[layout] = write_synthetic(layout, self.factory.mktemp(layout.replace("-", "_")),
                                                 num_videos=self.num_videos, num_frames=self.num_frames,
                                                 size=self.sizes[layout], seed=self.seed)
        return self.roots[layout]

    def clip(self, layout: str, split: str, index: int) -> SyntheticClip:
        return layout_clip(layout, split, index, num_frames=self.num_frames, size=self.sizes[layout], seed=self.seed)


@pytest.fixture(scope="session")
def synthetic_roots(tmp_path_factory) -> SyntheticRoots:
    return SyntheticRoots(tmp_path_factory)
