"""Model env planning without building: spec digests, uv/pip/conda command lines, tokenizers-from-source decisions.

The conda backend and a Rust build of tokenizers cannot run here (no conda channels, crates.io unreachable);
these tests cover their decision logic and the exact commands they would run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modelrig.config import CondaSettings, DataRoot, HostConfig, PipSettings
from modelrig.envs import build as envbuild
from modelrig.envs.build import build_env, failure_reason, plan_env_build, resolve_installer
from modelrig.envs.spec import env_key, package_requirements, resolved_spec, tokenizers_requirement
from modelrig.envs.tools import clean_environ, find_python, find_rust
from modelrig.errors import EnvBuildError
from modelrig.plan import EnvPlan, TorchBuild

CPU = TorchBuild(version="2.13.0", variant="cpu", index_url=None, requirements=["torch==2.13.0"])
CU121 = TorchBuild(version="2.1.2", variant="cu121", index_url="https://download.pytorch.org/whl/cu121",
                   requirements=["torch==2.1.2", "torchvision==0.16.2"])
LOCAL = HostConfig(pip=PipSettings(find_links=["/opt/wheels"], use_torch_index=False))


def env_plan(*packages: str, torch: TorchBuild = CPU, tokenizers: dict | None = None,
             python: str = "3.11") -> EnvPlan:
    return EnvPlan(python=python, torch=torch, packages=list(packages), tokenizers=tokenizers, env_vars={})


def venv_plan(env: EnvPlan, config: HostConfig = LOCAL, **kw):
    return plan_env_build(env, envs_dir=Path("/data/envs"), config=config, uv="/bin/uv",
                          base_python="/usr/bin/python3.11", python_version="3.11.7", **kw)


def test_identical_specs_have_the_same_key_and_a_changed_pin_a_new_one():
    a = env_key(resolved_spec(env_plan("transformers==4.37.0"), backend="venv", python_version="3.11.7"))
    b = env_key(resolved_spec(env_plan("transformers==4.37.0"), backend="venv", python_version="3.11.7"))
    pin = env_key(resolved_spec(env_plan("transformers==4.29.2"), backend="venv", python_version="3.11.7"))
    interp = env_key(resolved_spec(env_plan("transformers==4.37.0"), backend="venv", python_version="3.11.8"))
    conda = env_key(resolved_spec(env_plan("transformers==4.37.0"), backend="conda", python_version="3.11.7"))
    assert a == b
    assert len({a, pin, interp, conda}) == 4


def test_env_dir_is_keyed_under_the_envs_folder():
    plan = venv_plan(env_plan("transformers==4.37.0"))
    assert plan.path == Path("/data/envs") / plan.key
    assert plan.python == plan.path / "bin" / "python"


def test_uv_installs_torch_from_find_links_then_packages_with_torch_held():
    plan = venv_plan(env_plan("transformers==4.37.0", "sentencepiece"))
    create, torch_cmd, pkg_cmd = plan.commands
    assert create == ["/bin/uv", "venv", "--no-project", "--no-config", "--python", "/usr/bin/python3.11",
                      str(plan.path)]
    assert torch_cmd[:5] == ["/bin/uv", "pip", "install", "--no-config", "--python"]
    assert torch_cmd[-1] == "torch==2.13.0"
    assert ["--find-links", "/opt/wheels"] == torch_cmd[torch_cmd.index("--find-links"):][:2]
    assert "unsafe-best-match" in torch_cmd and "--index-url" not in torch_cmd
    assert pkg_cmd[-2:] == ["transformers==4.37.0", "sentencepiece"]
    assert pkg_cmd[pkg_cmd.index("--constraint") + 1] == str(plan.path / "modelrig-constraints.txt")
    assert plan.constraints == ["torch==2.13.0"]


def test_torch_comes_from_the_variant_index_when_the_host_uses_it():
    config = HostConfig(pip=PipSettings(index_url="https://mirrors.example/pypi/simple"))
    plan = venv_plan(env_plan("transformers==4.30.2", torch=CU121), config=config)
    _, torch_cmd, pkg_cmd = plan.commands
    assert torch_cmd[torch_cmd.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu121"
    assert torch_cmd[-2:] == ["torch==2.1.2", "torchvision==0.16.2"]
    assert pkg_cmd[pkg_cmd.index("--index-url") + 1] == "https://mirrors.example/pypi/simple"
    assert plan.constraints == ["torch==2.1.2", "torchvision==0.16.2"]


def test_torch_index_is_ignored_when_the_host_turns_it_off():
    config = HostConfig(pip=PipSettings(use_torch_index=False, extra_index_urls=["https://extra.example/simple"]))
    _, torch_cmd = venv_plan(env_plan(torch=CU121), config=config).commands
    assert "https://download.pytorch.org/whl/cu121" not in torch_cmd
    assert torch_cmd[torch_cmd.index("--extra-index-url") + 1] == "https://extra.example/simple"
    assert "unsafe-best-match" in torch_cmd


def test_pip_fallback_uses_the_venv_module_and_pip_inside_the_env():
    plan = venv_plan(env_plan("transformers==4.37.0"), installer="pip")
    create, torch_cmd, pkg_cmd = plan.commands
    assert create == ["/usr/bin/python3.11", "-m", "venv", str(plan.path)]
    assert torch_cmd[:4] == [str(plan.python), "-m", "pip", "install"]
    assert "--index-strategy" not in torch_cmd
    assert "--constraint" in pkg_cmd


def test_offline_builds_use_only_caches_or_local_wheels():
    uv_cmds = venv_plan(env_plan("transformers==4.37.0"), offline=True).commands
    pip_cmds = venv_plan(env_plan("transformers==4.37.0"), installer="pip", offline=True).commands
    assert all("--offline" in c for c in uv_cmds[1:])
    assert all("--no-index" in c and "--find-links" in c for c in pip_cmds[1:])


def test_git_refs_and_platform_markers_pass_through_to_the_installer():
    git = "transformers @ git+https://github.com/huggingface/transformers@0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
    marker = "bitsandbytes>=0.39; sys_platform == 'linux'"
    _, _, pkg_cmd = venv_plan(env_plan(git, marker)).commands
    assert pkg_cmd[-2:] == [git, marker]


def test_conda_backend_creates_the_env_with_the_host_channels_then_installs_with_uv():
    config = HostConfig(conda=CondaSettings(prefix="/opt/miniforge3",
                                            channels=["https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/conda-forge"]),
                        pip=PipSettings(find_links=["/opt/wheels"]))
    plan = plan_env_build(env_plan("transformers==4.37.0", python="3.10"), envs_dir=Path("/data/envs"),
                          config=config, backend="conda", uv="/bin/uv", conda="/opt/miniforge3/bin/conda")
    create, torch_cmd, _ = plan.commands
    assert create == ["/opt/miniforge3/bin/conda", "create", "-y", "-q", "-p", str(plan.path), "--override-channels",
                      "-c", "https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/conda-forge", "python=3.10"]
    assert torch_cmd[torch_cmd.index("--python") + 1] == str(plan.path / "bin" / "python")
    assert plan.spec["backend"] == "conda" and plan.spec["python_version"] == "3.10"


def test_conda_backend_without_an_install_says_how_to_get_miniforge(tmp_path, monkeypatch):
    monkeypatch.delenv("CONDA_EXE", raising=False)
    config = HostConfig(conda=CondaSettings(prefix=str(tmp_path / "miniforge3")))
    with pytest.raises(EnvBuildError, match="Miniforge") as info:
        build_env(env_plan(), data=DataRoot(tmp_path / "root"), config=config, backend="conda")
    assert str(tmp_path / "miniforge3") in str(info.value)
    assert not (tmp_path / "root" / "envs").exists()


def test_tokenizers_wheel_version_replaces_a_pin_in_packages():
    env = env_plan("transformers==4.30.2", "tokenizers==0.13.2",
                   tokenizers={"source": "wheel", "version": "==0.13.3"})
    assert package_requirements(env) == ["transformers==4.30.2", "tokenizers==0.13.3"]
    assert tokenizers_requirement(None) is None


def test_tokenizers_from_git_builds_the_python_bindings_at_the_pinned_ref():
    spec = {"source": "git", "repo": "https://github.com/huggingface/tokenizers", "ref": "v0.13.3"}
    plan = venv_plan(env_plan("transformers==4.30.2", "tokenizers==0.13.3", tokenizers=spec))
    assert plan.needs_rust
    assert plan.commands[-1][-1] == ("tokenizers @ git+https://github.com/huggingface/tokenizers@v0.13.3"
                                     "#subdirectory=bindings/python")
    assert "tokenizers==0.13.3" not in plan.commands[-1]


def test_tokenizers_from_git_without_rust_explains_rustup_and_its_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not find_rust().usable
    spec = {"source": "git", "repo": "https://github.com/huggingface/tokenizers", "ref": "v0.13.3"}
    with pytest.raises(EnvBuildError) as info:
        build_env(env_plan(tokenizers=spec), data=DataRoot(tmp_path / "root"), config=LOCAL)
    message = str(info.value)
    assert "cargo" in message and "rustup" in message and "RUSTUP_DIST_SERVER" in message
    assert "\n" not in message
    assert not any(p.is_dir() for p in (tmp_path / "root" / "envs").iterdir())


def test_installer_falls_back_to_pip_when_uv_is_missing(monkeypatch):
    monkeypatch.setattr(envbuild, "find_uv", lambda: None)
    assert resolve_installer("auto") == ("pip", None)
    with pytest.raises(EnvBuildError, match="uv not found"):
        resolve_installer("uv")


def test_installer_failures_are_reduced_to_their_cause():
    out = ("$ uv pip install nonexistent-pkg\nUsing Python 3.11.7 environment at: abc\n"
           "error: No solution found when resolving dependencies\n"
           "  cause: Because nonexistent-pkg was not found in the package registry and you require "
           "nonexistent-pkg, we can conclude that your requirements are unsatisfiable.\n")
    assert failure_reason(out).startswith("Because nonexistent-pkg was not found")
    pip_out = ("ERROR: Could not find a version that satisfies the requirement nonexistent-pkg (from versions: "
               "none)\nERROR: No matching distribution found for nonexistent-pkg\n")
    assert failure_reason(pip_out) == "ERROR: No matching distribution found for nonexistent-pkg"
    network = ("error: Request failed after 3 retries in 9.2s\n"
               "  cause: Failed to fetch: https://download.pytorch.org/whl/cpu/torch/\n"
               "  cause: dns error\n")
    assert failure_reason(network) == ("Request failed after 3 retries in 9.2s: Failed to fetch: "
                                       "https://download.pytorch.org/whl/cpu/torch/")


def test_subprocesses_never_see_another_environments_python_settings(monkeypatch):
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV"):
        monkeypatch.setenv(var, "/leak")
    env = clean_environ({"EXTRA": "1"})
    assert not {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV"} & set(env)
    assert env["PYTHONNOUSERSITE"] == "1" and env["EXTRA"] == "1"


def test_an_explicit_python_of_another_version_is_used_with_a_warning():
    interp, warnings = find_python("3.9", explicit=sys.executable)
    assert interp.minor == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert warnings and "manifest asks for 3.9" in warnings[0]


def test_a_missing_python_version_says_how_to_get_one():
    with pytest.raises(EnvBuildError, match=r"no Python 3\.99 found.*--python PATH"):
        find_python("3.99")
