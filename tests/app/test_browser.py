"""`mutr app` in a real browser: Chromium (the distribution's package) driven by Playwright.

The server is the real command (`python -m mutr_cli.main app`, a subprocess on a free port); the
page is used as a person would: click "Use the demo clip", type, tick, Run, read what appears,
download. Skipped, with the reason, where Gradio, Playwright or Chromium is missing; `.ci/run`
installs all three so CI runs it. A screenshot of the page after the demo run is saved under
$MUTR_TEST_ARTEFACTS (default: the test's tmp_path) and its path printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason='the browser test needs Gradio: pip install "mutr[app]"')
pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install playwright")
CHROMIUM = os.environ.get("MUTR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("the browser test needs Chromium: apt-get install chromium (or set MUTR_CHROMIUM)",
                allow_module_level=True)

import av  # noqa: E402
import numpy as np  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from segment_utils import make_video  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mutr.io.writers import decode_rle  # noqa: E402
from mutr.hub import demo_checkpoint_dir  # noqa: E402
from mutr_cli.main import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLIP = demo_checkpoint_dir().parent / "clip.mp4"
# a fresh profile and nothing that phones home: the page must work with no network at all
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_UPLOAD_MB = 2  # small, so that the test can send a bigger file
STATUS_DONE = "document.querySelector('#status')?.innerText.match(/^(Done|Error)/)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _import_gradio_cpu_seconds() -> float:
    """CPU seconds a bare `python -c "import gradio"` takes here and now: the floor of any Gradio app's start."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import gradio"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Server:
    def __init__(self) -> None:
        self.gradio_cpu_s = _import_gradio_cpu_seconds()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        began = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "mutr_cli.main", "app", "--port", str(self.port),
                                      "--max-upload-mb", str(MAX_UPLOAD_MB)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mutr app exited: {self.proc.stdout.read()}")
                if time.perf_counter() - began > 60:
                    raise RuntimeError("mutr app did not answer within 60 s")
                time.sleep(0.05)
        self.startup_s = time.perf_counter() - began
        self.startup_cpu_s = _cpu_seconds(self.proc.pid)
        self.first_line = self.proc.stdout.readline().strip()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.communicate(timeout=30)[0]


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        yield context
        context.close()


@pytest.fixture()
def page(browser, server):
    page = browser.new_page()
    page.outside = []  # every request that leaves 127.0.0.1
    page.on("request", lambda r: page.outside.append(r.url)
            if not r.url.startswith((server.url, "data:", "blob:")) else None)
    page.goto(server.url)
    page.wait_for_selector("#run")
    yield page
    page.close()


def _run(page, previous: str = "") -> str:
    """Click Run and wait for the status box to show a new Done or Error line."""
    page.click("#run")
    page.wait_for_function(f"(() => {{ const t = document.querySelector('#status')?.innerText.trim(); "
                           f"return t && t !== {json.dumps(previous)} && /^(Done|Error)/.test(t); }})()",
                           timeout=120_000)
    return page.inner_text("#status").strip()


def _download(page, name: str) -> bytes:
    href = page.get_attribute(f'#downloads a[download="{name}"]', "href")
    response = page.request.get(href)
    assert response.ok, href
    return response.body()


def _rle_masks(data: dict) -> dict[tuple[int, int], np.ndarray]:
    return {(a["prompt"], a["frame"]): decode_rle(a["segmentation"]) for a in data["annotations"]}


def test_app_starts_fast_and_binds_to_localhost(server):
    assert server.first_line == f"mutr app: open {server.url} in a browser (Ctrl-C stops it)"
    print(f"\nmutr app answered after {server.startup_s:.2f} s wall, {server.startup_cpu_s:.2f} s CPU "
          f"(a bare `import gradio`: {server.gradio_cpu_s:.2f} s CPU)")
    # CPU time is what the start costs (on an idle machine wall ~ CPU); wall time also counts whatever else
    # a shared machine runs meanwhile. What mutr adds to Gradio's own import (no torch at start) is checked
    # against a bare `import gradio` measured just before, which slows down with the machine in the same way.
    assert server.startup_cpu_s - server.gradio_cpu_s < 1.5
    assert server.startup_cpu_s < 5.0


def test_demo_clip_text_and_sound(page, server, tmp_path):
    steps, t = {}, time.perf_counter()
    page.click("#use-demo")
    page.wait_for_function("document.querySelector('#video video')?.readyState >= 1")
    assert page.is_visible("#demo-note") and "synthetic" in page.inner_text("#demo-note")
    page.fill("#prompts textarea", "the blue circle")
    page.check("#use-sound input")
    # record what the status box shows while the job runs (the progress bar draws there)
    page.evaluate("""() => { window.seen = []; const box = document.querySelector('#status');
        new MutationObserver(() => window.seen.push(box.innerText)).observe(box, {subtree: true, childList: true,
        characterData: true}); }""")
    steps["prepare"], t = time.perf_counter() - t, time.perf_counter()
    status = _run(page)
    steps["run"], t = time.perf_counter() - t, time.perf_counter()
    assert status.startswith("Done. Segmented 10 frames"), status
    seen = page.evaluate("window.seen")
    assert any(re.search(r"\b\d+ ?/ ?10 frames, [\d.]+ frames/s", s) for s in seen), seen[-5:]

    # the overlay plays in the page, 5 s long = 10 frames at 2 fps (the clip's own)
    played = page.evaluate("""async () => { const v = document.querySelector('#overlay video');
        v.muted = true; await v.play(); await new Promise(r => setTimeout(r, 800));
        return [v.duration, v.currentTime, v.videoWidth, v.videoHeight]; }""")
    assert played[0] == pytest.approx(5.0, abs=0.05) and played[1] > 0 and played[2:] == [160, 160], played
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(_download(page, "overlay.mp4"))
    with av.open(str(overlay)) as c:
        frames = sum(1 for _ in c.decode(video=0))
        assert len(c.streams.audio) == 1  # the clip's sound is kept
    assert frames == 10 == round(played[0] * 2)

    # two strips (one per prompt), each image loaded, captioned with its prompt
    strips = page.locator("#strips .thumbnail-item img")
    assert strips.count() == 2
    assert [strips.nth(k).get_attribute("alt").split(" — ")[0] for k in range(2)] == ["the blue circle",
                                                                                     "audio of the video"]
    assert all(page.evaluate("(img) => img.naturalWidth", strips.nth(k).element_handle()) == 8 * 96 + 7 * 4
               for k in range(2))
    assert "the blue circle" in page.inner_text("#status") and "audio of the video" in page.inner_text("#status")

    # the RLE JSON the page offers == what `mutr segment` writes for the same clip and prompts
    ours = json.loads(_download(page, "masks.rle.json"))
    steps["check"], t = time.perf_counter() - t, time.perf_counter()
    shot = Path(os.environ.get("MUTR_TEST_ARTEFACTS", tmp_path)) / "app-demo-run.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    result = CliRunner().invoke(app, ["segment", str(CLIP), "--text", "the blue circle", "--audio-from-video",
                                      "--size", "160", "--format", "rle", "--out", str(tmp_path / "cli"), "--quiet"])
    assert result.exit_code == 0, result.output
    theirs = json.loads((tmp_path / "cli" / "masks.rle.json").read_text())
    a, b = _rle_masks(ours), _rle_masks(theirs)
    assert a.keys() == b.keys() and len(a) == 20 and all(np.array_equal(a[k], b[k]) for k in a)
    assert ours["prompts"] == theirs["prompts"]
    steps["mutr segment"] = time.perf_counter() - t
    print("steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    assert page.outside == []


def test_bad_input_shows_one_line_and_the_next_run_works(page, server, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("a text file renamed .mp4\n")
    silent = tmp_path / "silent.mp4"
    make_video(silent, n=4)
    upload = "#video input[type=file]"

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 2**20))
    page.set_input_files(upload, str(big))  # Gradio refuses it before it reaches the server
    page.wait_for_selector(f'text=File(s) exceed the maximum allowed size of {MAX_UPLOAD_MB:.1f} Mb: "big.mp4"')
    page.click("#video button[aria-label='Clear']")

    page.set_input_files(upload, str(notes))
    page.fill("#prompts textarea", "the blue circle")
    status = _run(page)
    assert status == ("Error: notes.mp4 is not a video FFmpeg can read: upload a video file (MP4, MOV, MKV, "
                      "WebM, ...)")

    page.click("#use-demo")
    page.wait_for_function("document.querySelector('#video video')?.readyState >= 1")
    page.fill("#prompts textarea", "   ")
    status = _run(page, status)
    assert status == ("Error: nothing to segment: type a prompt such as \"the red car\", or tick \"use the video's "
                      "own sound\", or upload a sound file")

    page.click("#video button[aria-label='Clear']")
    page.set_input_files(upload, str(silent))
    page.check("#use-sound input")
    status = _run(page, status)
    assert status == ("Error: silent.mp4 has no sound: untick \"use the video's own sound\", upload a sound file, "
                      "or type a prompt")
    assert "Traceback" not in page.inner_text("body")

    page.click("#video button[aria-label='Clear']")
    page.click("#use-demo")
    page.wait_for_function("document.querySelector('#video video')?.readyState >= 1")
    page.uncheck("#use-sound input")
    page.fill("#prompts textarea", "the yellow square")
    status = _run(page, status)
    assert status.startswith("Done. Segmented 10 frames") and "the yellow square" in status
    assert page.locator("#strips .thumbnail-item img").count() == 1


def test_second_user_waits_in_the_queue(browser, server, tmp_path):
    long_clip = tmp_path / "long.mp4"
    make_video(long_clip, n=48, size=(160, 120), rate=25)  # 48 frames: 4 windows, a few seconds of work
    first, second = browser.new_page(), browser.new_page()
    try:
        for page in (first, second):
            page.goto(server.url)
            page.wait_for_selector("#run")
            page.fill("#prompts textarea", "the blue circle")
            page.evaluate("""() => { window.seen = []; const box = document.querySelector('#status');
                new MutationObserver(() => window.seen.push(box.innerText)).observe(box, {subtree: true,
                childList: true, characterData: true}); }""")
        first.set_input_files("#video input[type=file]", str(long_clip))
        second.click("#use-demo")
        second.wait_for_function("document.querySelector('#video video')?.readyState >= 1")
        first.click("#run")
        first.wait_for_function("window.seen.some(t => /frames/.test(t))", timeout=60_000)  # first is running
        second.click("#run")
        second.wait_for_function(STATUS_DONE, timeout=120_000)
        first.wait_for_function(STATUS_DONE, timeout=120_000)
        waited = [t for t in second.evaluate("window.seen") if "queue" in t.lower()]
        assert waited and re.search(r"queue: 1/\d", waited[0].lower()), second.evaluate("window.seen")
        print(f"\nthe second user saw: {waited[0]!r}")
        assert first.inner_text("#status").startswith("Done. Segmented 48 frames")
        assert second.inner_text("#status").startswith("Done. Segmented 10 frames")
    finally:
        first.close()
        second.close()



def test_stop_removes_temporary_files(page, server):
    page.click("#use-demo")
    page.wait_for_function("document.querySelector('#video video')?.readyState >= 1")
    page.fill("#prompts textarea", "the white triangle")
    assert _run(page).startswith("Done")
    href = page.get_attribute('#downloads a[download="overlay.mp4"]', "href")
    workspace = Path(re.search(r"file=(/.*?/mutr-app-[^/]+)/", href).group(1))
    time.sleep(0.5)  # the job's folder goes once the page has its results (a chained event)
    assert (workspace / "gradio").is_dir() and list((workspace / "jobs").iterdir()) == []
    log = server.stop()
    assert server.proc.returncode == 0, log
    assert not workspace.exists()
    assert "Traceback" not in log, log
