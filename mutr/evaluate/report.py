"""Reports of an evaluation: per-video CSV, per-object CSV, a sorted per-video plot, metrics.json.

Every file is written under a temporary name and renamed into place; metrics.json comes last.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from mutr.evaluate.store import staged_file, write_text


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows with the first row's columns (later rows may add columns; missing cells are empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) and math.isfinite(value) else value


def write_plot(path: Path, rows: list[dict[str, Any]], key: str, title: str) -> None:
    """Per-video ``key`` sorted high to low (bars; names on the axis up to 40 videos)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, renders with Agg

    ordered = sorted(rows, key=lambda r: -_finite(r[key]))
    values = [_finite(r[key]) for r in ordered]
    n = len(values)
    fig = Figure(figsize=(max(6.0, min(16.0, 0.3 * n + 2)), 4.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(n), values, width=0.85 if n <= 200 else 1.0, color="#4c72b0")
    mean = sum(values) / n if n else 0.0
    ax.axhline(mean, color="#c44e52", linestyle="--", linewidth=1, label=f"mean of videos {mean:.3f}")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    if n <= 40:
        ax.set_xticks(range(n), [str(r["video"]) for r in ordered], rotation=70, ha="right", fontsize=7)
    else:
        ax.set_xlabel(f"{n} videos, sorted")
    ax.legend(loc="upper right", fontsize=8)
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _finite(x: Any) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(_jsonable(data), indent=1) + "\n")


def _jsonable(x: Any) -> Any:
    """NaN -> null (strict JSON), Paths -> str."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x
