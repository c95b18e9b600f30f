import pytest


@pytest.fixture(autouse=True)
def cli_env(monkeypatch, tmp_path):
    """Each CLI test runs in its own folder, without --debug from the environment and outside any
    torchrun rank (the many-video and sharded commands read RANK / WORLD_SIZE / LOCAL_RANK)."""
    monkeypatch.delenv("MUTR_DEBUG", raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
