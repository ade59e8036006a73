"""The conda backend end to end against a Miniforge laid out by the stand-in installer (tests/helpers/standins.py):
`conda create` makes the manifest's Python at the env's path with only the host's channels, then uv installs torch
and the packages into it, the smoke check passes and the env is stamped; the calls are checked in order. The real
conda (and the Python it would download from conda-forge) cannot run here: the stand-in's `create` makes a venv
of this machine's python3.11 instead."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from modelrig.config import CondaSettings, DataRoot, HostConfig, PipSettings
from modelrig.envs import build_env
from modelrig.errors import EnvBuildError
from modelrig.plan import EnvPlan, TorchBuild
from tests.helpers.standins import MINIFORGE_INSTALLER
from tests.helpers.venvs import CACHE, TORCH, pip_find_links

pytestmark = pytest.mark.slow
TUNA = "https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/conda-forge"
PACKAGES = ["transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf", "numpy<2"]


@pytest.fixture
def miniforge(tmp_path: Path) -> Path:
    """A Miniforge prefix laid out by running the stand-in installer in batch mode, as the miniforge role does."""
    installer = tmp_path / "Miniforge3-0.0.0-1-Linux-x86_64.sh"
    installer.write_text(MINIFORGE_INSTALLER)
    prefix = tmp_path / "miniforge3"
    subprocess.run(["bash", str(installer), "-b", "-p", str(prefix)], check=True, capture_output=True)
    return prefix


def _calls(prefix: Path) -> list[list[str]]:
    log = prefix / "conda-calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def test_conda_creates_the_manifest_python_then_uv_installs_into_it(tmp_path, miniforge, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    config = HostConfig(conda=CondaSettings(prefix=str(miniforge), channels=[TUNA]),
                        pip=PipSettings(find_links=pip_find_links(), use_torch_index=False))
    env = EnvPlan(python="3.11", torch=TorchBuild(version="2.13.0", variant="cpu", index_url=None,
                                                  requirements=[TORCH]),
                  packages=PACKAGES, tokenizers=None, env_vars={})
    data = DataRoot(tmp_path / "root")
    built = build_env(env, data=data, config=config, backend="conda", model="qwen-vl-chat")
    path = Path(built.details["path"])
    assert built.changed and built.details["backend"] == "conda"
    assert _calls(miniforge) == [["create", "-y", "-q", "-p", str(path), "--override-channels", "-c", TUNA,
                                  "python=3.11"]]
    commands = [line[2:].split() for line in (data.envs / f"{path.name}.log").read_text().splitlines()
                if line.startswith("$ ")]
    assert [c[:2] for c in commands] == [[str(miniforge / "bin" / "conda"), "create"],
                                         [commands[1][0], "pip"], [commands[2][0], "pip"]]
    assert commands[1][-1] == TORCH and commands[2][-len(PACKAGES):] == PACKAGES
    assert "--python" in commands[1] and commands[1][commands[1].index("--python") + 1] == str(path / "bin/python")
    smoke = built.details["smoke"]
    assert smoke["prefix"] == str(path) and smoke["python"].startswith("3.11.")
    assert smoke["torch"].startswith("2.13.0") and smoke["transformers"] == "4.37.0"

    again = build_env(env, data=data, config=config, backend="conda", model="qwen-vl-chat")
    assert not again.changed and len(_calls(miniforge)) == 1  # a complete env is found, conda is not called


def test_conda_backend_without_the_miniforge_prefix_names_the_role(tmp_path):
    config = HostConfig(conda=CondaSettings(prefix=str(tmp_path / "miniforge3")))
    env = EnvPlan(python="3.10", torch=TorchBuild(version="2.13.0", variant="cpu", index_url=None,
                                                  requirements=[TORCH]), packages=[], tokenizers=None, env_vars={})
    with pytest.raises(EnvBuildError) as caught:
        build_env(env, data=DataRoot(tmp_path / "root"), config=config, backend="conda")
    assert str(caught.value).startswith(f"no conda found (conda.prefix {tmp_path / 'miniforge3'}); install Miniforge")
    assert "the miniforge Ansible role" in str(caught.value)
