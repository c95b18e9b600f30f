"""What a run writes besides checkpoints: ``metrics.jsonl``, ``curves.png`` and TensorBoard.

Only rank 0 records. Lines are appended and flushed one at a time, so a killed run leaves a valid
file; on resume, lines past the resumed step (written after the last checkpoint) are dropped so
the history reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mutr.errors import ConfigError
from mutr.files import atomic_write

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class Recorder:
    def __init__(self, out_dir: Path, *, enabled: bool = True, tensorboard: bool = False,
                 resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if resume_step is None or row.get("step", 0) <= resume_step:
                    kept.append(row)
            self.history = kept if resume_step is not None else []
            _atomic_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("run.tensorboard is true but the tensorboard package is missing; "
                                  "`pip install tensorboard` or set run.tensorboard=false") from None
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in row.items()}
        self.history.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            step = int(row.get("step", 0))
            for key, value in _flatten(row).items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def plot(self) -> Path | None:
        """Loss, per-term losses, learning rate and validation curves -> ``curves.png`` (atomic)."""
        if not self.enabled:
            return None
        train = [r for r in self.history if r.get("kind") == "train"]
        val = [r for r in self.history if r.get("kind") == "val"]
        if not train:
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        panels = 3 if val else 2
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), dpi=100)
        steps = [r["step"] for r in train]
        ax = axes[0]
        ax.plot(steps, [r["loss"] for r in train], label="total", color="black", lw=1.5)
        for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
            if name in train[-1].get("losses", {}):
                ax.plot(steps, [r["losses"].get(name, float("nan")) for r in train], label=name[5:], lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        positive = [r["loss"] for r in train if r["loss"] > 0]
        if positive and max(positive) / max(min(positive), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title("training loss")
        axes[1].plot(steps, [r["lr"] for r in train], color="tab:purple")
        axes[1].set_xlabel("step")
        axes[1].set_title("learning rate")
        if val:
            keys = sorted({k for r in val for k in r.get("metrics", {}) if k.endswith(("/J&F", "/J"))})
            for key in keys:
                axes[2].plot([r["step"] for r in val], [r["metrics"].get(key, float("nan")) for r in val],
                             marker="o", label=key, lw=1)
            axes[2].set_xlabel("step")
            axes[2].set_title("validation")
            axes[2].legend(fontsize=7)
        fig.tight_layout()
        target = self.out_dir / CURVES_FILE
        try:
            atomic_write(target, lambda tmp: fig.savefig(tmp, format="png"))
        finally:
            plt.close(fig)
        return target

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
