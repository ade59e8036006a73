"""Model environments built for real with uv (and pip as fallback): pins honoured, shared by spec, isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from modelrig.config import DataRoot, HostConfig, PipSettings
from modelrig.envs import build_env
from modelrig.errors import EnvBuildError
from modelrig.plan import EnvPlan, TorchBuild
from modelrig.stamp import read_stamp
from tests.helpers.venvs import CACHE, TORCH, pip_find_links

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

TORCH_CPU = TorchBuild(version="2.13.0", variant="cpu", index_url=None, requirements=[TORCH])
T437_PACKAGES = ["transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf", "numpy<2"]
T429_PACKAGES = ["transformers==4.29.2", "protobuf==3.20.3", "tokenizers", "sentencepiece", "accelerate", "numpy<2"]
#: This host's torch comes from pip's find-links folder, not from a torch variant index.
CONFIG = HostConfig(pip=PipSettings(find_links=pip_find_links(), use_torch_index=False))


def env_plan(packages: list[str]) -> EnvPlan:
    return EnvPlan(python="3.11", torch=TORCH_CPU, packages=packages, tokenizers=None,
                   env_vars={"TOKENIZERS_PARALLELISM": "false"})


def installed(python: Path, *names: str) -> dict[str, str]:
    code = ("import json, sys, importlib.metadata as m; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]})
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> DataRoot:
    """One data root for the module, with uv's cache shared with the test venvs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
        yield DataRoot(tmp_path_factory.mktemp("envs-root"))


@pytest.fixture(scope="module")
def t437(root: DataRoot):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
        return build_env(env_plan(T437_PACKAGES), data=root, config=CONFIG, model="t437")


def test_env_with_transformers_437_passes_its_smoke_check_with_those_versions(t437):
    assert t437.changed
    assert t437.details["installer"] == "uv"
    smoke = t437.details["smoke"]
    assert smoke["transformers"] == "4.37.0"
    assert smoke["torch"].startswith("2.13.0")
    assert smoke["cuda_available"] is False and smoke["mps_available"] is False
    python = Path(t437.details["python"])
    assert installed(python, "transformers", "torch")["transformers"] == "4.37.0"
    stamp = read_stamp(python.parent.parent)
    assert stamp["smoke"] == smoke and stamp["key"] == t437.details["key"]


def test_env_with_transformers_4292_and_protobuf_3203_passes_its_smoke_check(root, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    result = build_env(env_plan(T429_PACKAGES), data=root, config=CONFIG, model="t429")
    assert result.changed
    assert result.details["smoke"]["transformers"] == "4.29.2"
    versions = installed(Path(result.details["python"]), "transformers", "protobuf")
    assert versions == {"transformers": "4.29.2", "protobuf": "3.20.3"}


def test_identical_specs_share_one_env_and_a_rerun_does_nothing(t437, root, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    python = Path(t437.details["python"])
    before = python.parent.parent.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_env(env_plan(T437_PACKAGES), data=root, config=CONFIG, model="another-model")
    assert time.perf_counter() - start < 5
    assert not again.changed
    assert again.details["path"] == t437.details["path"]
    assert "exists" in again.summary
    assert python.parent.parent.stat().st_mtime_ns == before


def test_a_changed_pin_creates_a_new_env_and_leaves_the_old_one_intact(t437, root, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    changed = build_env(env_plan([*T437_PACKAGES[:-1], "numpy<1.27"]), data=root, config=CONFIG)
    assert changed.changed
    assert changed.details["key"] != t437.details["key"]
    old = Path(t437.details["python"])
    assert read_stamp(old.parent.parent)["key"] == t437.details["key"]
    assert installed(old, "transformers")["transformers"] == "4.37.0"


def test_a_failed_install_leaves_nothing_marked_complete_and_one_clear_line(root, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    with pytest.raises(EnvBuildError) as info:
        build_env(env_plan(["transformers==4.37.0", "modelrig-no-such-package-xyz"]), data=root, config=CONFIG)
    message = str(info.value)
    assert "\n" not in message
    assert "modelrig-no-such-package-xyz" in message and "log:" in message
    envs = [p for p in root.envs.iterdir() if p.is_dir()]
    assert all(read_stamp(p) is not None for p in envs)
    log = Path(message.rsplit("log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "modelrig-no-such-package-xyz" in log.read_text()


def test_no_package_of_the_toolkit_env_is_importable_from_a_model_env(t437, root, monkeypatch):
    python = Path(t437.details["python"])
    probe = ("import importlib.util as u; "
             "print([m for m in ('modelrig', 'pydantic', 'ansible', 'modelscope') if u.find_spec(m)])")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]})
    assert out.stdout.strip() == "[]"
    assert "include-system-site-packages = false" in (python.parent.parent / "pyvenv.cfg").read_text()
    # Even with the toolkit's site-packages on PYTHONPATH, env processes see only the env's own transformers.
    monkeypatch.setenv("PYTHONPATH", sysconfig.get_paths()["purelib"])
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    from modelrig.envs.smoke import smoke_check

    assert smoke_check(python)["transformers"] == "4.37.0"


def test_pip_fallback_builds_the_same_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CACHE_DIR", str(CACHE / "pip"))
    result = build_env(env_plan(T437_PACKAGES), data=DataRoot(tmp_path), config=CONFIG, installer="pip")
    assert result.changed and result.details["installer"] == "pip"
    assert result.details["smoke"]["transformers"] == "4.37.0"
    assert installed(Path(result.details["python"]), "transformers")["transformers"] == "4.37.0"


def test_modelrig_env_reports_a_failed_install_in_one_line_and_exit_code_7(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    manifest = yaml.safe_load((REPO / "model_manifests" / "demo-tiny-ziya.yaml").read_text())
    manifest["env"]["packages"] = ["transformers==4.37.0", "modelrig-no-such-package-xyz"]
    path = tmp_path / "broken-env.yaml"
    path.write_text(yaml.safe_dump({**manifest, "id": "broken-env"}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pip": {"find_links": pip_find_links(), "use_torch_index": False}}))
    root = tmp_path / "root"
    code, out, err = cli("--data-root", root, "--config", config, "env", path)
    assert code == 7
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("modelrig: error: ")
    assert "modelrig-no-such-package-xyz" in err
    assert not [p for p in (root / "envs").iterdir() if p.is_dir()]


def test_modelrig_env_dry_run_shows_the_commands_and_builds_nothing(tmp_path, cli):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pip": {"find_links": ["/opt/wheels"], "use_torch_index": False}}))
    code, out, _ = cli("--data-root", tmp_path / "root", "--config", config, "env", "demo-tiny-ziya", "--dry-run",
                       "--json")
    assert code == 0
    build = json.loads(out)
    assert build["path"] == str(tmp_path / "root" / "envs" / build["key"])
    assert build["commands"][1][-1] == "torch==2.13.0"
    assert "gradio>=6,<7" in build["commands"][2]
    assert not (tmp_path / "root" / "envs").exists()


def test_env_for_a_recorded_cuda_host_takes_torch_from_its_variant_index_even_if_the_model_does_not_fit(
        tmp_path, cli):
    facts = REPO / "tests" / "fixtures" / "hosts" / "rtx3090-old-driver.json"
    code, out, err = cli("--data-root", tmp_path / "root", "env", "ziya-llama-13b-v1.1", "--facts", facts,
                         "--dry-run", "--json")
    assert code == 0, err
    build = json.loads(out)
    torch_cmd = build["commands"][1]
    assert torch_cmd[torch_cmd.index("--index-url") + 1].startswith("https://download.pytorch.org/whl/cu")
    assert build["spec"]["plan"]["python"] == "3.10"
    assert "the model itself cannot run on this host" in err
