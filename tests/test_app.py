"""The Faust app a worker runs, as configured (no broker)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from stream.app import create_app
from stream.settings import Settings


def test_faust_directories_go_to_the_temp_dir_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(topic_prefix="app-dirs"), "127.0.0.1:1")
    app._create_directories()  # what Faust does when the worker starts
    assert list(tmp_path.iterdir()) == []
    assert app.conf.datadir == Path(tempfile.gettempdir()) / "app-dirs-worker-data"
    assert app.conf.tabledir.is_relative_to(app.conf.datadir)
