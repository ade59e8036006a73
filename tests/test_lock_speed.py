"""What else every `modelrig lock` (and every plan of an env) spends time on, cut without changing what it
decides: the Python on PATH is taken without asking uv, and the torch build table is parsed by libyaml."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from modelrig.envs import tools
from modelrig.errors import EnvBuildError
from modelrig.plan.torch import TORCH_BUILDS_FILE, load_torch_table, parse_torch_table


def test_finding_the_envs_python_asks_uv_only_when_path_and_pyenv_have_none(tmp_path, monkeypatch):
    """Every lock plans the env again: the Python on PATH is taken without the two `uv python find` processes
    (~0.2 s) that used to run before any candidate was tried."""
    log = tmp_path / "uv-calls"
    uv = tmp_path / "uv"
    uv.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexit 1\n")
    uv.chmod(0o755)
    monkeypatch.setattr(tools, "find_uv", lambda: str(uv))
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    interp, warnings = tools.find_python(minor, managed_dir=tmp_path / "pythons")
    assert interp.minor == minor and warnings == []
    assert not log.exists()
    with pytest.raises(EnvBuildError, match=r"no Python 3\.99 found"):
        tools.find_python("3.99", managed_dir=tmp_path / "pythons")
    assert log.read_text().splitlines() == ["python find --no-config --no-project --system 3.99"] * 2


def test_the_torch_table_parsed_by_libyaml_is_the_table_the_python_parser_reads():
    assert yaml.CSafeLoader is not None
    text = TORCH_BUILDS_FILE.read_text(encoding="utf-8")
    assert load_torch_table() == parse_torch_table(yaml.load(text, Loader=yaml.SafeLoader))
