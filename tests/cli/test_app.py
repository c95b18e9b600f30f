"""`mutr app` without a browser: the optional extra stays optional, and its absence is one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mutr_cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def test_without_gradio_one_line_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.delenv("MUTR_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["app", "--port", "7999"])
    assert result.exit_code == 1
    assert result.output.strip() == 'error: the web page needs Gradio, which is not installed: pip install "mutr[app]"'


def test_import_mutr_and_the_cli_do_not_import_gradio_or_torch():
    code = ("import sys, mutr, mutr.app, mutr.app.jobs, mutr_cli.main; "
            "print(sorted(m for m in ('gradio', 'torch', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_gradio_is_an_extra_not_a_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("gradio") for d in project["dependencies"])
    assert project["optional-dependencies"]["app"] == ["gradio>=6.0"]


def test_app_help_lists_the_options():
    result = CliRunner().invoke(app, ["app", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--checkpoint", "--host", "--port", "--device", "--precision", "--max-upload-mb", "--max-seconds"):
        assert option in result.output
    assert "127.0.0.1" in result.output and "7860" in result.output


def test_port_in_use_is_one_line_and_leaves_no_workspace(tmp_path):
    pytest.importorskip("gradio", reason='needs Gradio: pip install "mutr[app]"')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, TMPDIR=str(tmp_path))  # the workspace would be made here
        out = subprocess.run([sys.executable, "-m", "mutr_cli.main", "app", "--port", str(port)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"error: cannot listen on 127.0.0.1:{port} (in use, or not an address of this machine): "
                          "pass another --port or --host\n")
    assert list(tmp_path.iterdir()) == []
