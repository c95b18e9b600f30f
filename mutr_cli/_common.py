"""What every subcommand shares: one-line errors, exit codes, the --debug switch."""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from typing import Annotated, Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mutr.errors import MutrError

F = TypeVar("F", bound=Callable[..., Any])

stderr = Console(stderr=True)
stdout = Console()

Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run; auto picks CUDA when available.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="fp32 is exact; bf16 (CPU with AVX-512 BF16, or GPU) / fp16 (GPU) run under autocast: "
    "about 2.3x faster than fp32 on such a CPU; on the demo model masks agree with fp32 at mean IoU 0.999.")]


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("MUTR_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> None:
    """Print one red line on stderr and exit; used for every user error."""
    # escaped: a message may hold brackets that rich would take for markup (pip install "mutr[app]")
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn MutrError (and OSError from user paths) into a one-line message unless debugging."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = debug_enabled(bool(kwargs.get("debug", False)))
        try:
            return func(*args, **kwargs)
        except (MutrError, OSError) as exc:
            if debug:
                raise
            fail(str(exc) or type(exc).__name__)
        except KeyboardInterrupt:
            if debug:
                raise
            stderr.print("interrupted", highlight=False)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
