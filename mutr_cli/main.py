"""The `mutr` command. Each subcommand lives in its own module and only parses, calls, prints."""

from __future__ import annotations

from typing import Annotated

import typer

import mutr

app = typer.Typer(
    name="mutr",
    help="Segment the object a text or a sound refers to in a video (MUTR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mutr {mutr.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """mutr: text- and audio-referred video object segmentation."""


def _register() -> None:
    # Subcommand modules register themselves on `app`; an absent module is simply not offered.
    import importlib

    for name in ("smoke", "convert", "download", "segment", "eval", "train", "audio_features", "app"):
        try:
            importlib.import_module(f"mutr_cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mutr_cli.{name}":
                raise


_register()

if __name__ == "__main__":  # pragma: no cover
    # Subcommands registered on the importable module, not on this __main__ copy.
    from mutr_cli.main import app as _registered

    _registered()
