"""Module arguments come from inventories that several people edit: a value that looks like an engine option
(`--launch-dir=DIR`) or a path (`../../x`) is refused as a model id or entry name, or reaches the engine as a value
(after `--`, or as `--flag=VALUE`), never as an option. Every module is run for real, on localhost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env

TOOLKIT = Path(sys.executable).parent.parent
MODELRIG = str(Path(sys.executable).parent / "modelrig")


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    """A folder that looks like a rendered entry whose start.sh leaves a mark: what an option-looking model value
    tried to make `modelrig launch` run."""
    entry = tmp_path / "hostile" / "evil"
    entry.mkdir(parents=True)
    (entry / "entry.json").write_text(json.dumps({"model": "x", "entry": "evil", "kind": "openai_api", "port": 9,
                                                  "bind": "127.0.0.1"}))
    (entry / "start.sh").write_text(f"touch {tmp_path / 'ran'}\n")
    return tmp_path / "hostile"


def run_module(tmp: Path, module: str, args: dict, *, check: bool = False) -> dict:
    """`ansible localhost -m MODULE -a ARGS` with the toolkit env as interpreter; the module's result."""
    args = {"toolkit_env": str(TOOLKIT), "data_root": str(tmp / "data"), **args}
    cmd = [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", module, "-a",
           json.dumps(args), "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        cmd.append("--check")
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(tmp), capture_output=True, text=True, timeout=300,
                          check=False)
    try:  # `localhost | FAILED! => {...}`
        status, _, shown = done.stdout.partition(" => ")
        return {**json.loads(shown), "failed": status.endswith("| FAILED!")}
    except ValueError:
        pytest.fail(f"no module result: {done.stdout}{done.stderr}")


def test_an_option_looking_model_is_refused_by_launch_and_runs_nothing(tmp_path, hostile_dir):
    result = run_module(tmp_path, "modelrig_launch", {"model": f"--launch-dir={hostile_dir}", "entry": "evil",
                                                      "render": False, "supervisor": "process", "timeout": 2})
    assert result.get("failed") is True
    assert result["msg"] == (f"model='--launch-dir={hostile_dir}': not a model id (lowercase letters, digits, "
                             "'.', '_', '-'; first a letter or digit)")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("module, args, field", [
    ("modelrig_launch", {"model": "demo-tiny-ziya", "entry": "--launch-dir=/tmp", "render": False}, "entry"),
    ("modelrig_launch", {"model": "../../x", "state": "stopped"}, "model"),
    ("modelrig_env", {"model": "--python=/bin/sh"}, "model"),
    ("modelrig_fetch", {"model": "--store=/tmp/elsewhere"}, "model"),
    ("modelrig_convert", {"model": "--local=x=/tmp"}, "model"),
    ("modelrig_lock", {"model": "--out=/tmp/x.yaml"}, "model"),
    ("modelrig_lock", {"model": "/tmp/some/manifest.yaml"}, "model"),  # a path never names the default lock path
])
def test_option_looking_or_path_names_are_refused_in_one_line(tmp_path, module, args, field):
    result = run_module(tmp_path, module, args, check=True)
    assert result.get("failed") is True, result
    assert result["msg"].startswith(f"{field}={args[field]!r}: not a "), result["msg"]
    assert "cmd" not in result  # refused before the engine ran
    assert not (tmp_path / "data").exists()


def test_state_refuses_a_model_that_is_not_an_id_in_one_line_naming_it(tmp_path):
    result = run_module(tmp_path, "modelrig_state", {"models": ["demo-tiny-ziya", "--store=/tmp/x"]})
    assert result.get("failed") is True, result
    assert result["msg"] == ("models: '--store=/tmp/x' is not a model id (lowercase letters, digits, '.', '_', '-'; "
                             "first a letter or digit)")
    assert "cmd" not in result  # refused before the engine ran


def test_option_looking_paths_reach_the_engine_as_values(tmp_path):
    rebuilt = run_module(tmp_path, "modelrig_lock", {"state": "rebuilt", "lock": "--bundle=/tmp/x.tar"})
    assert rebuilt.get("failed") is True
    assert rebuilt["cmd"][-2:] == ["--", "--bundle=/tmp/x.tar"]
    assert rebuilt["msg"] == "modelrig: error: --bundle=/tmp/x.tar: lock file not found [lock_invalid]"

    facts = run_module(tmp_path, "modelrig_facts", {"config": "--quiet"})
    assert facts.get("failed") is True
    assert facts["msg"] == "modelrig: error: --quiet: config file not found [config_invalid]", facts["msg"]

    fetched = run_module(tmp_path, "modelrig_fetch", {"model": "demo-tiny-ziya", "store": "--check",
                                                      "local": {"x": "--verify"}, "hub": "huggingface",
                                                      "hf_endpoint": "http://127.0.0.1:9"}, check=True)
    assert fetched["cmd"][2:] == ["fetch", "--hub=huggingface", "--store=--check", "--hf-endpoint=http://127.0.0.1:9",
                                  "--local=x=--verify", "--json", "--check", "--", "demo-tiny-ziya"]
    assert fetched["msg"].startswith("modelrig: error: base: no hub reachable: huggingface: cannot reach "
                                     "http://127.0.0.1:9"), fetched["msg"]


@pytest.mark.parametrize("verb", ["launch", "stop", "status"])
def test_the_engine_refuses_a_model_that_is_not_an_id(tmp_path, hostile_dir, verb):
    args = ["--", f"--launch-dir={hostile_dir}"] + (["evil"] if verb != "status" else [])
    done = subprocess.run([MODELRIG, "--data-root", str(tmp_path / "data"), verb, *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"modelrig: error: model '--launch-dir={hostile_dir}': not a model id (lowercase "
                           "letters, digits, '.', '_', '-') [usage]\n")
    assert not (tmp_path / "ran").exists()


def test_the_engine_refuses_an_entry_that_is_not_a_name(tmp_path):
    done = subprocess.run([MODELRIG, "--data-root", str(tmp_path / "data"), "stop", "demo-tiny-ziya", "../../x"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr == ("modelrig: error: entry '../../x': not a launch entry name (lowercase letters, digits, "
                           "'_', '-') [usage]\n")
