"""`mutr download NAME|URL`: fetch registered weights (or any URL) into the cache; `--list` shows them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from mutr import hub
from mutr_cli._common import Debug, debug_enabled, handle_errors, stderr, stdout
from mutr_cli.main import app


def _check_sha256(value: Optional[str]) -> Optional[str]:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise typer.BadParameter("expected 64 hex digits (a SHA-256)")
    return value


NameOrUrl = Annotated[Optional[str], typer.Argument(
    metavar="NAME_OR_URL", help="A registry name (see --list) or an http(s)/Google Drive URL.", show_default=False)]
Sha256 = Annotated[Optional[str], typer.Option(
    "--sha256", metavar="HEX", callback=_check_sha256, help="Expected SHA-256 of the file; a mismatch deletes it.")]
Dir = Annotated[Optional[Path], typer.Option(
    "--dir", metavar="DIR", file_okay=False, help="Put the files here instead of the cache ($MUTR_HOME).")]
ListFlag = Annotated[bool, typer.Option("--list", help="List the registered weights and exit.")]


_JF = ("Ref-YouTube-VOS J&F", "Ref-DAVIS17 J&F")


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return "?"  # pragma: no cover


def _print_list() -> None:
    entries = hub.list_entries()
    inline = stdout.width >= 120  # sources go in the table when they fit, else below it
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    for header in ("name", "kind", "preset", "size", "YTVOS", "DAVIS", "verified", "downloaded"):
        table.add_column(header, no_wrap=True, justify="right" if header in ("size", "YTVOS", "DAVIS") else "left",
                         min_width=max(len(e.name) for e in entries) if header == "name" else None)
    if inline:
        table.add_column("source", overflow="fold")
    for entry in entries:
        scores = dict(entry.scores)
        ytvos, davis = (f"{scores[k]:.1f}" if k in scores else "-" for k in _JF)
        check = {"sha256": "sha256", "prefix": "prefix", "none": "no"}[entry.verified]
        row = [entry.name, entry.kind, entry.preset or "-", _size(entry.size), ytvos, davis, check,
               "yes" if hub.is_downloaded(entry) else "no"]
        table.add_row(*row, *([entry.source] if inline else []))
    stdout.print(table)
    if not inline:
        for entry in entries:
            stdout.print(f"{entry.name}: {entry.source}", highlight=False, soft_wrap=True)
    stdout.print("YTVOS / DAVIS: J&F on Ref-YouTube-VOS / Ref-DAVIS17, as reported by the MUTR authors; "
                 "backbone: the weights a preset's official training starts from (model.backbone.pretrained); "
                 "prefix: the first 8 hex digits of the sha256 are known; (+n): fallback sources", style="dim")


class _Bar:
    """Turns the library's (done, total) callbacks into one rich bar, restarted for each file."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.task, self.last = progress, label, None, -1

    def __call__(self, done: int, total: Optional[int]) -> None:
        if self.task is None or done < self.last:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(self.label, total=total, completed=done)
        self.progress.update(self.task, completed=done, total=total)
        self.last = done


@app.command("download")
@handle_errors
def download(
    name_or_url: NameOrUrl = None,
    sha256: Sha256 = None,
    dest_dir: Dir = None,
    list_: ListFlag = False,
    debug: Debug = False,
) -> None:
    """Download weights by registry name or URL; print the local path."""
    if list_:
        _print_list()
        return
    if not name_or_url:
        raise typer.BadParameter("give a registry name or a URL, or use --list", param_hint="NAME_OR_URL")
    from huggingface_hub.utils import logging as hf_logging

    def report(item: hub.FileReport) -> None:
        if item.sha256 and not item.verified:
            stderr.print(f"{item.path.name}: sha256 {item.sha256} (unverified: no known hash; "
                         "pass --sha256 to check it)", highlight=False)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    verbosity = hf_logging.get_verbosity()
    if not debug_enabled(debug):  # huggingface_hub logs each retry; the one-line error says it all
        hf_logging.set_verbosity_error()
    try:
        # no bar when stderr is not a terminal: logs get the path and errors, not redraws
        with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
            label = name_or_url if len(name_or_url) < 40 else "downloading"
            path = hub.download(name_or_url, sha256=sha256, dest_dir=dest_dir, progress=_Bar(progress, label),
                                on_file=report)
    finally:
        hf_logging.set_verbosity(verbosity)
    stdout.print(str(path), highlight=False, soft_wrap=True)
