"""`mutr app`: a local web page to segment a video by text or by its own sound.

The page is :mod:`mutr.app.page` (Gradio, an optional extra: ``pip install "mutr[app]"``); this
module parses the options, starts it, prints the URL and waits for Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Optional

import typer

from mutr_cli._common import Debug, Device, DeviceOpt, Precision, PrecisionOpt, handle_errors, stderr, stdout
from mutr_cli.main import app

Checkpoint = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="NAME_OR_PATH", show_default=False,
    help="The checkpoint the page starts with: a folder or a downloaded registry name; the page also offers "
    "the bundled demo model and every downloaded registry checkpoint.")]
Host = Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 makes the page reachable "
                                   "from other machines.")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")]
MaxUploadMb = Annotated[float, typer.Option("--max-upload-mb", min=1, metavar="MB",
                                            help="Refuse uploads larger than this.")]
MaxSeconds = Annotated[float, typer.Option("--max-seconds", min=1, metavar="SECONDS",
                                           help="Refuse jobs whose video span (start..end) is longer than this.")]


@app.command("app")
@handle_errors
def app_command(
    checkpoint: Checkpoint = None,
    host: Host = "127.0.0.1",
    port: Port = 7860,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    max_upload_mb: MaxUploadMb = 200.0,  # mutr.app.jobs.Limits (not imported: keeps `mutr --help` fast)
    max_seconds: MaxSeconds = 120.0,
    debug: Debug = False,
) -> None:
    """Start a local web page: upload a video, type what to segment or use its sound, watch the result."""
    from mutr.app.jobs import Limits
    from mutr.app.page import launch

    server = launch(checkpoint=checkpoint, host=host, port=port, device=device.value, precision=precision.value,
                    limits=Limits(max_upload_mb=max_upload_mb, max_seconds=max_seconds))
    # a plain `kill` stops the page like Ctrl-C does, so that its temporary files are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stdout.print(f"mutr app: open {server.url} in a browser (Ctrl-C stops it)", highlight=False, soft_wrap=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        stderr.print("stopped", highlight=False)
