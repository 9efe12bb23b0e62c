"""The worker caches the workflow modules' bytecode: the sandbox need not compile them per run."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

import pytest

from worker.main import WORKFLOWS, cache_workflow_bytecode


def test_bytecode_is_written_even_when_python_is_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    monkeypatch.setattr("sys.pycache_prefix", str(tmp_path))  # keep the checkout untouched
    cache_workflow_bytecode()
    for wf in WORKFLOWS:
        source = inspect.getsourcefile(wf)
        assert source is not None
        cached = Path(importlib.util.cache_from_source(source))
        assert cached.is_relative_to(tmp_path)
        assert cached.stat().st_size > 0
        # the loader accepts it: the header records the source's current mtime
        header = cached.read_bytes()[:16]
        assert int.from_bytes(header[8:12], "little") == int(os.stat(source).st_mtime) & 0xFFFFFFFF


def test_an_unwritable_cache_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr("sys.pycache_prefix", str(blocker / "cache"))
    cache_workflow_bytecode()  # nothing can be written there; nothing is raised
    assert blocker.is_file()
