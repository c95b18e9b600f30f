"""Weights registry and download engine, against an HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import sys
import threading
import types
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mutr import fetch, hub
from mutr.errors import DownloadError, InputError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes by path; every request is logged as (method, path, Range header) on the server."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _body(self, data: bytes, *, honour_range: bool = True, cut: bool = False,
              ctype: str = "application/octet-stream", extra: dict | None = None) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and honour_range:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", '"v1"')
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        if cut:  # promise everything, send a third, hang up
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        server = self.server
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        server.log.append((self.command, url.path, self.headers.get("Range")))
        n = sum(1 for _, p, _ in server.log if p == url.path)
        if url.path == "/file.bin":
            self._body(PAYLOAD)
        elif url.path == "/cut.bin":  # the first answer breaks off; later ones honour Range
            self._body(PAYLOAD, cut=n == 1)
        elif url.path == "/cut-norange.bin":  # breaks off once, then never honours Range
            self._body(PAYLOAD, honour_range=False, cut=n == 1)
        elif url.path == "/norange.bin":
            self._body(PAYLOAD, honour_range=False)
        elif url.path == "/wrong.bin":
            self._body(b"not the weights" * 100)
        elif url.path == "/uc":  # Google Drive imitation
            self._drive(query)
        elif url.path == "/download" and query.get("confirm") == "t" and query.get("uuid", "").startswith("u-"):
            cut = query["uuid"] == "u-cut" and n == 1  # "u-cut": the first transfer breaks off
            self._body(PAYLOAD, cut=cut, extra={"Content-Disposition": 'attachment; filename="ckpt.pth"'})
        elif url.path.startswith("/hf/model/resolve/"):  # Hugging Face Hub imitation
            self._body(PAYLOAD, extra={"X-Repo-Commit": COMMIT})
        else:
            self.send_error(404)

    def _drive(self, query: dict) -> None:
        file_id = query.get("id")
        if file_id in ("BIGFILE0001", "CUTFILE0001"):  # current page: a GET form with confirm=t, uuid
            uuid = "u-1" if file_id == "BIGFILE0001" else "u-cut"
            page = ('<html><title>Google Drive - Virus scan warning</title><body>'
                    '<form id="download-form" action="/download" method="get">'
                    '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{uuid}"></form></body></html>')
            self._body(page.encode(), ctype="text/html; charset=utf-8")
        elif file_id == "OLDFILE0001":  # oldest flow: a download_warning cookie holds the token
            cookie = self.headers.get("Cookie") or ""
            if query.get("confirm") == "tok42" and "download_warning_1=tok42" in cookie:
                self._body(PAYLOAD, extra={"Content-Disposition": 'attachment; filename="old.pth"'})
            else:
                self._body(b"<html><title>Warning</title></html>", ctype="text/html",
                           extra={"Set-Cookie": "download_warning_1=tok42; Path=/"})
        elif file_id == "QUOTA000001":
            page = ('<html><title>Google Drive - Quota exceeded</title><p class="uc-error-subcaption">'
                    'Too many users have viewed or downloaded this file recently.</p></html>')
            self._body(page.encode(), ctype="text/html")
        else:
            self.send_error(404)


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.log = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Any lookup of a host other than 127.0.0.1 fails at once, so no test can reach the network."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"tests are offline ({host})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MUTR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".part.json")))


# --------------------------------------------------------------------------- registry


def test_registry_entries_are_consistent():
    names = [e.name for e in hub.list_entries()]
    assert len(names) == len(set(names))
    presets = {"r50", "r101", "swin-l", "video-swin-t", "video-swin-s", "video-swin-b", "convnext-l", "convmae-b"}
    for entry in hub.list_entries():
        assert entry.kind in hub.KINDS and entry.licence and entry.files
        for wf in entry.files:
            assert (wf.hf_repo is None) != (not wf.urls)
            assert wf.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", wf.sha256)
            if wf.sha256_prefix:  # torch.hub convention: the prefix is in the file name
                assert wf.filename.rsplit(".", 1)[0].endswith("-" + wf.sha256_prefix)
        for req in entry.requires:
            assert req in hub.REGISTRY
        if entry.kind == "official-mutr":
            assert entry.preset in presets
            assert all(hub.gdrive_id(u) for u in entry.files[0].urls)
            scores = dict(entry.scores)
            assert scores["Ref-YouTube-VOS J&F"] > 60 and scores["Ref-DAVIS17 J&F"] > 60
            for data in ("Ref-YouTube-VOS", "Ref-DAVIS17"):  # J&F is the mean of J and F (all three rounded)
                assert abs(scores[f"{data} J&F"] - (scores[f"{data} J"] + scores[f"{data} F"]) / 2) <= 0.1 + 1e-9
        if entry.kind == "backbone":
            assert entry.preset in presets and not entry.scores
    official = {e.preset: e.name for e in hub.list_entries() if e.kind == "official-mutr"}
    assert official == {p: f"mutr-{p}" for p in presets}  # all eight released checkpoints
    assert {e.preset for e in hub.list_entries() if e.kind == "backbone"} == presets - {"r50", "r101"}


def test_readme_drive_ids_come_first():
    urls = hub.REGISTRY["mutr-r50"].files[0].urls
    assert [hub.gdrive_id(u) for u in urls] == ["1W1hSYd1DDFdhl46rpE1Y1OgsG1N5Zh7B",
                                                 "1bNkR4n7be3hYwtaYp75c2WNrbmyh-Ik2"]
    assert hub.REGISTRY["vggish"].files[0].sha256_prefix == "10086976"
    assert hub.REGISTRY["mutr-r50"].verified == "none"
    # README (June 2025) id first, docs/ (May 2023) id second; Video-Swin-T has one id in both
    assert [hub.gdrive_id(u) for u in hub.REGISTRY["mutr-convmae-b"].files[0].urls] == [
        "1_hHPVici-RIcn7ocvn6RPDSMG4gJA5Pj", "1kM9VLjdzl_YKN09WD6iSzmvtxVYU_NiE"]
    assert [hub.gdrive_id(u) for u in hub.REGISTRY["mutr-video-swin-t"].files[0].urls] == [
        "1-TkdQksTrmB253ao99NgnmsrsQkous2V"]


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(DownloadError, match="did you mean mutr-r50"):
        hub.download("mutr-r5O")


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(DownloadError, match="run `mutr download mutr-r50`"):
        hub.resolve_checkpoint("mutr-r50")
    assert hub.resolve_checkpoint(tmp_path) == tmp_path
    with pytest.raises(DownloadError, match="neither an existing path nor a registry name"):
        hub.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(DownloadError, match="not a MUTR checkpoint"):
        hub.resolve_checkpoint("vggish")


def test_bad_sha256_is_rejected():
    with pytest.raises(InputError, match="64 hex digits"):
        hub.download("http://127.0.0.1:9/x", sha256="abc")


# --------------------------------------------------------------------------- plain HTTP


def test_plain_download_verifies_and_reports(server, home):
    seen, reports = [], []
    path = hub.download(f"{server.url}/file.bin", sha256=SHA.upper(), progress=lambda d, t: seen.append((d, t)),
                        on_file=reports.append)
    assert path.read_bytes() == PAYLOAD and path.name == "file.bin"
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert reports[0].verified and reports[0].sha256 == SHA
    assert _leftovers(home) == []
    # a second call is a cache hit (hash re-checked, no request)
    assert hub.download(f"{server.url}/file.bin", sha256=SHA) == path
    assert len(server.log) == 1


def test_unverified_download_reports_its_hash(server, tmp_path):
    reports = []
    path = hub.download(f"{server.url}/file.bin", dest_dir=tmp_path / "d", on_file=reports.append)
    assert path == tmp_path / "d" / "file.bin"
    assert reports[0].sha256 == SHA and not reports[0].verified
    assert (tmp_path / "d" / "file.bin.sha256").read_text().strip() == SHA


def test_cut_off_download_resumes_with_range(server, home):
    seen = []
    path = hub.download(f"{server.url}/cut.bin", sha256=SHA, progress=lambda d, t: seen.append(d))
    assert path.read_bytes() == PAYLOAD
    ranges = [r for _, p, r in server.log if p == "/cut.bin"]
    assert ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1])
    assert ranges[1] == f"bytes={len(PAYLOAD) // 3}-" and len(PAYLOAD) // 3 in seen
    assert _leftovers(home) == []


def test_interrupted_download_resumes_on_the_next_call(server, home, monkeypatch):
    monkeypatch.setattr(fetch, "_RETRIES", 0)
    url = f"{server.url}/cut.bin"
    with pytest.raises(DownloadError, match="run the same command again to resume") as info:
        hub.download(url, sha256=SHA)
    assert "\n" not in str(info.value)
    parts = list(home.rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == len(PAYLOAD) // 3
    assert not parts[0].with_suffix("").exists()  # nothing under the final name
    path = hub.download(url, sha256=SHA)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, p, r in server.log][-1] == f"bytes={len(PAYLOAD) // 3}-"


def test_server_ignoring_range_restarts(server, home):
    path = hub.download(f"{server.url}/cut-norange.bin", sha256=SHA)
    assert path.read_bytes() == PAYLOAD  # the second, full answer replaced the partial bytes
    ranges = [r for _, p, r in server.log]
    assert ranges[0] is None and ranges[1] is not None


def test_stale_part_from_another_url_is_not_continued(server, home):
    url = f"{server.url}/norange.bin"
    final = home / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:12] / "norange.bin"
    final.parent.mkdir(parents=True)
    Path(str(final) + ".part").write_bytes(b"garbage" * 10)
    assert hub.download(url, sha256=SHA).read_bytes() == PAYLOAD
    assert server.log[0][2] is None  # no Range: the part file's source was unknown


def test_wrong_hash_deletes_the_file(server, home):
    with pytest.raises(DownloadError, match="the file was deleted") as info:
        hub.download(f"{server.url}/wrong.bin", sha256=SHA)
    assert SHA in str(info.value) and "\n" not in str(info.value)
    assert [p for p in home.rglob("*") if p.is_file() and p.suffix != ".lock"] == []


def test_http_404(server):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        hub.download(f"{server.url}/missing.bin")
    assert "\n" not in str(info.value)


def test_no_network_is_one_line():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1") as info:
        hub.download(f"http://127.0.0.1:{port}/x.pth")
    assert "\n" not in str(info.value) and "check the network connection" in str(info.value)


# --------------------------------------------------------------------------- Google Drive


@pytest.mark.parametrize("file_id", ["BIGFILE0001", "OLDFILE0001"])
def test_google_drive_confirmation(server, monkeypatch, tmp_path, file_id):
    monkeypatch.setenv("MUTR_GDRIVE_URL", server.url)
    path = hub.download(f"https://drive.google.com/file/d/{file_id}/view?usp=sharing", sha256=SHA,
                        dest_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD and path.name == f"gdrive-{file_id}"


def test_google_drive_download_resumes_after_the_page(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MUTR_GDRIVE_URL", server.url)
    path = hub.download("https://drive.google.com/uc?export=download&id=CUTFILE0001", sha256=SHA,
                        dest_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD
    log = [(p, r) for _, p, r in server.log]
    assert log == [("/uc", None), ("/download", None), ("/uc", None),
                   ("/download", f"bytes={len(PAYLOAD) // 3}-")]


def test_range_not_satisfiable_restarts(server, home):
    url = f"{server.url}/file.bin"
    final = home / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:12] / "file.bin"
    final.parent.mkdir(parents=True)
    Path(str(final) + ".part").write_bytes(PAYLOAD + b"extra")  # longer than the file: 416
    Path(str(final) + ".part.json").write_text(json.dumps({"url": url, "validator": None}))
    assert hub.download(url, sha256=SHA).read_bytes() == PAYLOAD
    assert [r for _, _, r in server.log] == [f"bytes={len(PAYLOAD) + 5}-", None]


def test_corrupted_cache_is_downloaded_again(server, home):
    url = f"{server.url}/file.bin"
    path = hub.download(url, sha256=SHA)
    path.write_bytes(b"bit rot")
    with pytest.warns(UserWarning, match="does not match its sha256"):
        assert hub.download(url, sha256=SHA).read_bytes() == PAYLOAD
    assert len(server.log) == 2


def test_google_drive_quota_page(server, monkeypatch):
    monkeypatch.setenv("MUTR_GDRIVE_URL", server.url)
    with pytest.raises(DownloadError, match="Too many users") as info:
        hub.download("https://drive.google.com/file/d/QUOTA000001/view")
    assert "drive.google.com/file/d/QUOTA000001" in str(info.value)


def _fake_convert(calls: list):
    def convert_checkpoint(src, out_dir, *, preset):
        calls.append((Path(src), preset))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        assert Path(src).read_bytes() == PAYLOAD
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "config.json").write_text("{}")

    return types.SimpleNamespace(convert_checkpoint=convert_checkpoint)


def _official_entry(*ids: str) -> hub.WeightsEntry:
    urls = tuple(f"https://drive.google.com/file/d/{i}/view" for i in ids)
    return hub.WeightsEntry("test-official", "official-mutr", (hub.WeightFile("test-official.pth", urls=urls),),
                            preset="tiny", licence="test")


def test_official_checkpoint_is_downloaded_and_converted(server, monkeypatch, home):
    monkeypatch.setenv("MUTR_GDRIVE_URL", server.url)
    calls = []
    monkeypatch.setitem(sys.modules, "mutr.convert", _fake_convert(calls))
    # the first id is gone (404): the fallback id is used
    monkeypatch.setitem(hub.REGISTRY, "test-official", _official_entry("GONEFILE001", "BIGFILE0001"))
    assert not hub.is_downloaded("test-official")
    out = hub.download("test-official")
    assert out == home / "test-official" == hub.resolve_checkpoint("test-official")
    assert calls == [(out / "official" / "test-official.pth", "tiny")]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "official"]
    assert hub.is_downloaded("test-official")
    assert hub.download("test-official") == out and len(calls) == 1  # converted once


def test_failed_conversion_leaves_no_checkpoint(server, monkeypatch, home):
    monkeypatch.setenv("MUTR_GDRIVE_URL", server.url)

    def broken(src, out_dir, *, preset):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise hub.DownloadError("boom")

    monkeypatch.setitem(sys.modules, "mutr.convert", types.SimpleNamespace(convert_checkpoint=broken))
    monkeypatch.setitem(hub.REGISTRY, "test-official", _official_entry("BIGFILE0001"))
    with pytest.raises(DownloadError, match="boom"):
        hub.download("test-official")
    out = home / "test-official"
    assert sorted(p.name for p in out.iterdir()) == ["official"]  # the .pth is kept for the next try
    with pytest.raises(DownloadError, match="mutr download test-official"):
        hub.resolve_checkpoint("test-official")


# --------------------------------------------------------------------------- Hugging Face Hub


def test_hf_offline_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE") as info:
        hub.download("roberta-base-tokenizer")
    assert "\n" not in str(info.value)


def test_hf_unreachable_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})  # the check is skipped behind a proxy
    monkeypatch.setenv("MUTR_HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1") as info:
        hub.download("roberta-base-tokenizer")
    assert "\n" not in str(info.value)


def test_hf_entry_through_a_local_endpoint(server, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.utils._headers as hf_headers

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_headers, "detect_agent", lambda: None)  # it would ask the real Hub
    monkeypatch.setenv("MUTR_HF_ENDPOINT", server.url)
    entry = hub.WeightsEntry("test-native", "mutr", (hub.WeightFile("model.safetensors", hf_repo="hf/model",
                                                                    sha256=SHA),), licence="test")
    monkeypatch.setitem(hub.REGISTRY, "test-native", entry)
    seen = []
    path = hub.download("test-native", progress=lambda d, t: seen.append((d, t)))
    assert (path / "model.safetensors").read_bytes() == PAYLOAD and seen[-1][0] == len(PAYLOAD)
    assert hub.resolve_checkpoint("test-native") == path and hub.is_downloaded("test-native")
    assert all(p.startswith("/hf/model/resolve/main/") for _, p, _ in server.log)
