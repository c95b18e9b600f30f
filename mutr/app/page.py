"""The web page of ``mutr app`` (Gradio, an optional extra: ``pip install "mutr[app]"``).

Layout only: every job goes through :func:`mutr.app.jobs.run_job`, i.e. ``mutr.Predictor`` and
``mutr.outputs.write_outputs`` as in ``mutr segment``. Gradio is imported when a page is built,
never by ``import mutr``. The page works offline: no analytics, no share link, the theme's fonts
are served by the server itself.

One job runs at a time (Gradio's queue, concurrency 1; a waiting user sees their place). Errors a
user can fix appear as one line in the status box, and the server keeps serving.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mutr.app.jobs import (DEMO, JobRequest, Limits, Workspace, checkpoint_choices, default_size, describe,
                           md_escape, parse_prompts, run_job, strips)
from mutr.errors import InputError, MissingExtraError, MutrError

__all__ = ["AppServer", "build_page", "launch", "require_gradio"]

log = logging.getLogger(__name__)

MIN_GRADIO = "6.0"
DEMO_NOTE = ("**The demo model** is tiny (383k parameters) and was trained for ten minutes on synthetic "
             "clips of coloured circles, squares and triangles, each with a tone of its own. It follows "
             "prompts such as \"the blue circle\" or \"the square in the middle\" and the shapes' sounds, "
             "on clips like the demo clip only; on real videos its masks are meaningless. Use a real checkpoint "
             "(`mutr download mutr-r50`) for real videos.")
# the strips are wide (8 thumbnails side by side): let each gallery cell take its image's own height
CSS = """
#status {min-height: 2em}
#strips {height: auto !important; min-height: 0 !important}
#strips .grid-wrap {min-height: 0 !important; height: auto !important; max-height: none !important;
                   overflow: visible !important}
#strips .grid-container {grid-auto-rows: auto !important}
#strips .thumbnail-item {aspect-ratio: auto !important; height: auto !important}
#strips .thumbnail-item img {width: 100%; height: auto !important; object-fit: contain}
"""


NO_GRADIO = 'the web page needs Gradio, which is not installed: pip install "mutr[app]"'


def _check_installed() -> None:
    """Fail before anything else happens, without importing Gradio (that comes after GRADIO_TEMP_DIR is set)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("gradio") is not None
    except ValueError:  # sys.modules["gradio"] is None: blocked on purpose
        found = False
    if not found:
        raise MissingExtraError(NO_GRADIO)


def require_gradio():
    """Import Gradio, or raise a one-line error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise MissingExtraError(NO_GRADIO) from None
    major = int(gradio.__version__.split(".")[0])
    if major < int(MIN_GRADIO.split(".")[0]):
        raise MissingExtraError(f"mutr app needs Gradio >= {MIN_GRADIO}, found {gradio.__version__}: "
                                'pip install -U "mutr[app]"')
    return gradio


def demo_clip() -> Path:
    """The bundled demo clip, next to the demo model."""
    from mutr.hub import demo_checkpoint_dir

    return demo_checkpoint_dir().parent / "clip.mp4"


@dataclass
class _Models:
    """The last used checkpoint's Predictor (one at a time: a real model takes GBs)."""

    device: str = "auto"
    precision: str = "fp32"
    _key: str | None = None
    _predictor: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, checkpoint: str):
        from mutr.predictor import Predictor, load_checkpoint

        with self._lock:
            if self._key != checkpoint:
                self._predictor = None
                model, _ = load_checkpoint(None if checkpoint == DEMO else checkpoint)
                self._predictor = Predictor(model, device=self.device, precision=self.precision)
                self._key = checkpoint
            return self._predictor


def build_page(workspace: Workspace, models: _Models | None = None, *, checkpoint: str | None = None,
               limits: Limits = Limits()):
    """The page as a ``gradio.Blocks`` (not launched)."""
    gr = require_gradio()
    models = models or _Models()
    choices = checkpoint_choices(checkpoint)
    first = checkpoint or DEMO

    def run(video, prompts, use_sound, sound_file, choice, folder, size, start, end, progress=gr.Progress()):
        chosen = (folder or "").strip() or choice or DEMO
        request = JobRequest(video=Path(video) if video else Path(""), texts=parse_prompts(prompts),
                             audio="from-video" if use_sound else (sound_file or None), checkpoint=chosen,
                             start=_seconds(start), end=_seconds(end), size=int(size or default_size(chosen)))
        job = workspace.new_job()
        try:
            if use_sound and sound_file:
                raise InputError("use the video's own sound or a sound file, not both: untick the box or remove "
                                 "the file")
            progress(0, desc="loading the model")
            predictor = models.get(chosen)

            def report(done: int, total: int | None, fps: float) -> None:
                text = f"{done} / {total} frames, {fps:.1f} frames/s" if total else f"{done} frames, {fps:.1f} frames/s"
                progress((done, total) if total else None, desc=text, unit="frames")

            result = run_job(request, predictor, job, limits, report)
        except MutrError as exc:
            workspace.release(job)
            return _failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - the page shows one line and keeps serving
            workspace.release(job)
            log.exception("mutr app: job failed")
            first_line = (str(exc).splitlines() or [""])[0]
            return _failed(f"mutr could not finish this job ({type(exc).__name__}: {first_line}); the server "
                           "log has the details")
        files = [str(result.overlay), str(result.masks_zip), str(result.rle)]
        return ("Done. " + describe(result), str(result.overlay), strips(result), files, str(job))

    def _failed(message: str):
        return (f"**Error:** {md_escape(message)}", None, [], None, None)

    def on_checkpoint(choice):
        return gr.update(visible=choice == DEMO), gr.update(value=default_size(choice))

    with gr.Blocks(title="mutr: segment what a text or a sound refers to",
                   delete_cache=(600, 3600)) as page:
        gr.Markdown("## mutr: segment the object a text or a sound refers to\n"
                    "Upload a video (or use the demo clip), type what to segment (one prompt per line) and/or use "
                    "its sound, then **Run**. One job runs at a time; others wait in the queue.")
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=260)
                use_demo = gr.Button("Use the demo clip", elem_id="use-demo", size="sm")
                prompts = gr.Textbox(label="What to segment: one prompt per line", lines=2, elem_id="prompts",
                                     placeholder="the blue circle")
                use_sound = gr.Checkbox(label="Use the video's own sound", elem_id="use-sound")
                sound_file = gr.File(label="...or a sound file (its start lines up with the first frame)",
                                     type="filepath", elem_id="sound-file", height=80)
                with gr.Accordion("Model and span", open=True):
                    choice = gr.Dropdown(choices=choices, value=first, label="Checkpoint", elem_id="checkpoint")
                    demo_note = gr.Markdown(DEMO_NOTE, visible=first == DEMO, elem_id="demo-note")
                    folder = gr.Textbox(label="...or a local checkpoint folder", elem_id="checkpoint-folder",
                                        placeholder="/path/to/checkpoint (config.json + model.safetensors)")
                    with gr.Row():
                        size = gr.Number(value=default_size(first), precision=0, minimum=32,
                                         label="Model input size (short side, px)", elem_id="size")
                        start = gr.Number(value=None, minimum=0, label="Start (s; empty = 0)", elem_id="start")
                        end = gr.Number(value=None, minimum=0, label="End (s; empty = the end)", elem_id="end")
                run_button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="status")
                overlay = gr.Video(label="Overlay (with the video's sound)", elem_id="overlay", interactive=False,
                                   height=320)
                strip_gallery = gr.Gallery(label="Masks per prompt", elem_id="strips", columns=1,
                                           object_fit="contain", allow_preview=False)
                downloads = gr.File(label="Downloads: overlay, PNG masks (zip), RLE JSON", file_count="multiple",
                                    elem_id="downloads", interactive=False)
        job_folder = gr.State(None)

        # load the first model when someone opens the page (not at start: torch alone takes seconds), so
        # that their first Run starts at once; a failure here is reported by the job that needs the model
        page.load(lambda: _warm(models, first), queue=False, show_progress="hidden")
        use_demo.click(lambda: str(demo_clip()), outputs=video, queue=False)
        choice.change(on_checkpoint, inputs=choice, outputs=[demo_note, size], queue=False)
        run_button.click(run, inputs=[video, prompts, use_sound, sound_file, choice, folder, size, start, end],
                         outputs=[status, overlay, strip_gallery, downloads, job_folder],
                         concurrency_limit=1, concurrency_id="segment", show_progress_on=[status],
                         ).then(workspace.release, inputs=job_folder, queue=False)
    return page


def _warm(models: _Models, checkpoint: str) -> None:
    try:
        models.get(checkpoint)
    except Exception:  # noqa: BLE001
        log.debug("mutr app: preloading %s failed", checkpoint, exc_info=True)


def _seconds(value) -> float | None:
    """An empty number box arrives as None or 0: both mean "from the start" / "to the end"."""
    return None if value in (None, "") or float(value) <= 0 else float(value)


class AppServer:
    """A running page: ``url``; ``wait()`` blocks until Ctrl-C; ``close()`` stops it and removes
    every temporary file (also on exit)."""

    def __init__(self, page, workspace: Workspace) -> None:
        self.page, self.workspace = page, workspace
        self.url = page.local_url.rstrip("/") if page.local_url else None
        self._closed = False
        atexit.register(self.close)  # a library caller that never calls close() still leaves nothing behind

    def wait(self) -> None:
        try:
            self.page.block_thread()
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.page.close()
        finally:
            self.workspace.close()


def launch(*, checkpoint: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
           precision: str = "fp32", limits: Limits = Limits()) -> AppServer:
    """Start the page on ``host:port`` (in a background thread) and return the running server."""
    _check_installed()
    if checkpoint not in (None, DEMO):
        from mutr.hub import resolve_checkpoint

        resolve_checkpoint(checkpoint)  # fail now, on the command line, for an unknown name or path
    if device != "auto":  # "auto" cannot fail; checking it would import torch and slow the start
        from mutr.predictor import resolve_device

        resolve_device(device)
    workspace = Workspace()
    # uploads and served copies go under the workspace (removed on close); Gradio reads this at import
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.root / "gradio")
    try:
        gr = require_gradio()
        models = _Models(device, precision)
        page = build_page(workspace, models, checkpoint=checkpoint, limits=limits)
        page.queue(default_concurrency_limit=1)
        page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                    show_error=False, max_file_size=f"{limits.max_upload_mb:g}mb", ssr_mode=False,
                    enable_monitoring=False, allowed_paths=[str(demo_clip()), str(workspace.root)],
                    theme=gr.themes.Default(), css=CSS, footer_links=[])
    except OSError as exc:
        workspace.close()
        if "port" not in str(exc).lower():
            raise
        raise MutrError(f"cannot listen on {host}:{port} (in use, or not an address of this machine): pass "
                        "another --port or --host") from None
    except BaseException:
        workspace.close()
        raise
    return AppServer(page, workspace)
