"""`mutr train --config FILE.yaml`: train (or resume) a MUTR model; multi-process through torchrun.

    mutr train --config configs/synthetic-tiny.yaml --out runs/syn
    mutr train --config configs/joint.yaml --set data.train.0.root=/data/ytvos --set optim.lr=5e-5
    torchrun --nproc_per_node 8 "$(which mutr)" train --config configs/joint.yaml
    mutr train --resume runs/syn            # continue a run from its folder (config.yaml inside)

A run folder that already holds a checkpoint is resumed automatically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mutr_cli._common import Debug, handle_errors, stderr, stdout
from mutr_cli.main import app

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", "-c", metavar="FILE.yaml", dir_okay=False,
    help="Training recipe (see configs/). With --resume DIR it defaults to DIR/config.yaml.")]
SetOpt = Annotated[Optional[List[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override a recipe field, e.g. --set optim.lr=2e-4 (repeatable).")]
# `--resume [DIR]`: click cannot give an option an optional value, so the flag takes the run folder
# as the (optional) positional argument that follows it.
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Resume the run in DIR (given after --resume), --out or run.out_dir; fail if there is "
                     "nothing to resume. Without it an existing run folder is still resumed.")]
RunDirArg = Annotated[Optional[Path], typer.Argument(
    metavar="[DIR]", file_okay=False, show_default=False, help="With --resume: the run folder to continue.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", metavar="DIR", file_okay=False, help="Run folder (overrides run.out_dir).")]


class _Progress:
    """Draws the library's TrainEvents as one rich bar (step, loss, lr, it/s, ETA) plus log lines.

    The bar starts with the run (after set-up), so set-up errors print as one clean line."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.task, self.started = progress, None, False

    def __call__(self, event) -> None:
        if event.kind == "start":
            self.progress.start()
            self.started = True
            self.task = self.progress.add_task("training", total=event.total_steps, completed=event.step,
                                               loss="-", lr="-", speed="-")
            if event.message:
                self.progress.console.print(event.message, highlight=False)
        elif event.kind == "step" and self.task is not None:
            self.progress.update(self.task, completed=event.step, loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}",
                                 speed=f"{event.it_per_s:.2f} it/s" if event.it_per_s else "-")
        elif event.kind == "validation":
            shown = "  ".join(f"{k} {v:.3f}" for k, v in event.metrics.items() if k.endswith(("/J", "/J&F")))
            self.progress.console.print(f"step {event.step}: {shown}", highlight=False)
        elif event.kind == "checkpoint":
            self.progress.console.print(f"step {event.step}: checkpoint {event.path}", highlight=False, style="dim")


@app.command("train")
@handle_errors
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    run_dir: RunDirArg = None,
    out: OutOpt = None,
    debug: Debug = False,
) -> None:
    """Train MUTR from a YAML recipe; resumes automatically from the run folder."""
    from mutr.errors import ConfigError
    from mutr.train.config import TrainConfig
    from mutr.train.trainer import Trainer

    if run_dir is not None and not resume:
        raise typer.BadParameter(f"unexpected {run_dir}; to continue that run use --resume {run_dir}",
                                 param_hint="DIR")
    resume_dir = run_dir
    if config is None:
        if resume_dir is None or not (resume_dir / "config.yaml").is_file():
            raise typer.BadParameter("give a recipe (configs/*.yaml), or --resume DIR of a run with config.yaml",
                                     param_hint="--config")
        config = resume_dir / "config.yaml"
    cfg = TrainConfig.from_yaml(config, list(set_ or []))
    out_dir = out or resume_dir or Path(cfg.run.out_dir)
    if resume_dir is not None and out is not None and out.resolve() != resume_dir.resolve():
        raise ConfigError(f"--resume {resume_dir} and --out {out} name different folders; give one of them")
    mode = True if resume else "auto"
    is_main = int(os.environ.get("RANK", "0")) == 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
               TimeRemainingColumn())
    progress = Progress(*columns, console=stderr, disable=not is_main, auto_refresh=stderr.is_terminal)
    bar = _Progress(progress)
    try:
        result = Trainer(cfg, out_dir=out_dir, resume=mode, callbacks=[bar]).fit()
    finally:
        if bar.started:  # rich prints a newline when stopping a never-started bar
            progress.stop()
    if is_main:
        stdout.print(str(result.model_dir), highlight=False, soft_wrap=True)
        if result.metrics:
            stderr.print("  ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()), highlight=False)
