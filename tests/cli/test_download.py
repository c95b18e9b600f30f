"""`mutr download` in-process through Typer's CliRunner, against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest
from typer.testing import CliRunner

from mutr_cli.main import app

PAYLOAD = b"weights" * 50_000
SHA = hashlib.sha256(PAYLOAD).hexdigest()
runner = CliRunner()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/w.pth":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture()
def url():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MUTR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MUTR_DEBUG", raising=False)
    return tmp_path / "home"


def test_list_shows_the_registry():
    result = runner.invoke(app, ["download", "--list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("mutr-r50", "mutr-swin-l", "vggish", "roberta-base-tokenizer"):
        assert name in result.stdout
    assert "official-mutr" in result.stdout and "61.9" in result.stdout
    # both J&F columns: Ref-YouTube-VOS then Ref-DAVIS17 (ConvMAE-B: 66.9, 69.2)
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("mutr-convmae-b"))
    assert row.split()[4:6] == ["66.9", "69.2"]
    assert "swin-l-in22k" in result.stdout and "backbone" in result.stdout


def test_download_url_prints_the_path(url, tmp_path):
    result = runner.invoke(app, ["download", f"{url}/w.pth", "--sha256", SHA, "--dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "out" / "w.pth")
    assert (tmp_path / "out" / "w.pth").read_bytes() == PAYLOAD


def test_unverified_download_reports_the_hash(url, home):
    result = runner.invoke(app, ["download", f"{url}/w.pth"])
    assert result.exit_code == 0, result.output
    assert SHA in result.stderr and "unverified" in result.stderr
    assert result.stdout.strip().endswith("w.pth")


def test_http_error_is_one_line(url):
    result = runner.invoke(app, ["download", f"{url}/nope.pth"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error:") and "HTTP 404" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_hash_mismatch_exits_1(url, home):
    result = runner.invoke(app, ["download", f"{url}/w.pth", "--sha256", "0" * 64])
    assert result.exit_code == 1 and "the file was deleted" in result.stderr
    assert not any(p.name == "w.pth" for p in home.rglob("*"))


def test_no_network_is_one_line():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = runner.invoke(app, ["download", f"http://127.0.0.1:{port}/w.pth"])
    assert result.exit_code == 1 and "cannot reach" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_not_downloaded_name_hint_and_unknown_name():
    result = runner.invoke(app, ["download", "mutr-r5O"])
    assert result.exit_code == 1 and "did you mean mutr-r50" in result.stderr


def test_debug_shows_the_traceback(url):
    result = runner.invoke(app, ["download", f"{url}/nope.pth", "--debug"])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "DownloadError"


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["download"]).exit_code == 2
    assert runner.invoke(app, ["download", "vggish", "--sha256", "xyz"]).exit_code == 2
