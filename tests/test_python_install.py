"""The Python a plan names, installed with uv when the host lacks it: from a mirror the test serves on loopback,
checked against the sha256 of uv's downloads list (a mirror serving other bytes is refused)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelrig.config import DataRoot, HostConfig, PipSettings, PythonSettings
from modelrig.envs import build_env
from modelrig.envs.python_install import managed_python_dir, python_install_command, python_install_environ
from modelrig.envs.tools import clean_environ, find_uv
from modelrig.errors import EnvBuildError
from modelrig.plan import EnvPlan, TorchBuild
from modelrig.stamp import read_stamp
from tests.helpers.pythons import downloads_json, mirror_folder, sha256, standalone_archive, uv_builtin_url
from tests.helpers.served import serve_folder
from tests.helpers.venvs import CACHE, TORCH, pip_find_links

pytestmark = pytest.mark.slow

#: pyenv has it on this machine (the archive is made from it); the tests hide pyenv, so the "host" lacks it.
WANTED = "3.11.7"
TORCH_CPU = TorchBuild(version="2.13.0", variant="cpu", index_url=None, requirements=[TORCH])
PLAN = EnvPlan(python=WANTED, torch=TORCH_CPU, packages=["transformers==4.37.0", "numpy<2"], tokenizers=None,
               env_vars={})


@pytest.fixture
def host_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataRoot:
    """A data root on a "host" whose only Python 3.11 is the system's 3.11.2: no pyenv, no uv-managed Pythons."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "no-uv-pythons"))
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    out = subprocess.run(["python3.11", "-c", "import sys; print(sys.version_info[:3])"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() != "(3, 11, 7)"
    return DataRoot(tmp_path / "root")


def config(**python: str) -> HostConfig:
    return HostConfig(pip=PipSettings(find_links=pip_find_links(), extra_index_urls=["file:///opt/pypi/simple"],
                                      use_torch_index=False), python=PythonSettings(**python))


def test_install_step_alone_may_download_pythons_and_uses_the_mirror_and_list_given():
    settings = PythonSettings(mirror="http://127.0.0.1:1/pbs/", downloads_json_url="/x/downloads.json")
    env = python_install_environ(settings, install_dir=Path("/data/python"))
    assert {k: env[k] for k in env if k.startswith("UV_PYTHON")} == {
        "UV_PYTHON_DOWNLOADS": "manual", "UV_PYTHON_INSTALL_DIR": "/data/python",
        "UV_PYTHON_INSTALL_MIRROR": "http://127.0.0.1:1/pbs", "UV_PYTHON_DOWNLOADS_JSON_URL": "/x/downloads.json"}
    assert python_install_command(uv="uv", version="3.10") == [
        "uv", "python", "install", "--no-config", "--no-bin", "--no-registry", "3.10"]
    assert clean_environ()["UV_PYTHON_DOWNLOADS"] == "never"


def test_a_python_the_host_lacks_is_installed_from_the_mirror_and_the_env_built_on_it(host_without_it, tmp_path):
    archive = standalone_archive(WANTED)
    mirror_folder(tmp_path / "mirror", archive)
    listing = downloads_json(tmp_path / "downloads.json", WANTED, sha=sha256(archive))
    with serve_folder(tmp_path / "mirror") as mirror:
        result = build_env(PLAN, data=host_without_it, config=config(mirror=mirror.url,
                                                                     downloads_json_url=str(listing)), model="m")
    assert mirror.requests == [f"/20991231/cpython-{WANTED}%2B20991231-x86_64-unknown-linux-gnu-install_only.tar.gz"]
    env = Path(result.details["path"])
    stamp = read_stamp(env)
    assert stamp["spec"]["python_version"] == WANTED
    assert stamp["smoke"]["python"] == WANTED and stamp["smoke"]["torch"] == "2.13.0+cpu"
    out = subprocess.run([str(env / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                         capture_output=True, text=True, check=True)
    base = Path(out.stdout.strip())
    assert base.parent == managed_python_dir(host_without_it)
    assert base.name == f"cpython-{WANTED}-linux-x86_64-gnu"
    again = build_env(PLAN, data=host_without_it, config=config(mirror="http://127.0.0.1:9"), model="m")
    assert again.changed is False  # the installed Python is found again: nothing is downloaded


def test_a_mirror_serving_other_bytes_than_uvs_pinned_checksum_is_refused(host_without_it, tmp_path):
    uv = find_uv()
    assert uv is not None
    url = uv_builtin_url(uv, WANTED)  # uv's own list, with the sha256 of the real python-build-standalone build
    build, name = urlsplit(url).path.split("/")[-2:]
    mirror_folder(tmp_path / "mirror", standalone_archive(WANTED), build=build, name=name.replace("%2B", "+"))
    with serve_folder(tmp_path / "mirror") as mirror, pytest.raises(EnvBuildError) as caught:
        build_env(PLAN, data=host_without_it, config=config(mirror=mirror.url), model="m")
    assert mirror.requests == [f"/{build}/{name}"]
    assert caught.value.code == "python_install_failed"
    message = str(caught.value)
    assert message.startswith(f"install Python {WANTED} with uv from the mirror {mirror.url} failed (exit 1): "
                              f"Failed to install cpython-{WANTED}-linux-x86_64-gnu: Hash mismatch for "
                              f"`cpython-{WANTED}-linux-x86_64-gnu`")
    assert "\n" not in message
    assert not list(managed_python_dir(host_without_it).glob("cpython-*"))
    assert not host_without_it.envs.exists() or not any(read_stamp(p) for p in host_without_it.envs.iterdir())


def test_a_downloads_list_with_another_sha256_is_refused(host_without_it, tmp_path):
    archive = standalone_archive(WANTED)
    mirror_folder(tmp_path / "mirror", archive)
    listing = downloads_json(tmp_path / "downloads.json", WANTED, sha="0" * 64)
    with serve_folder(tmp_path / "mirror") as mirror, pytest.raises(EnvBuildError) as caught:
        build_env(PLAN, data=host_without_it, config=config(mirror=mirror.url, downloads_json_url=str(listing)))
    assert caught.value.code == "python_install_failed"
    assert f"Hash mismatch for `cpython-{WANTED}-linux-x86_64-gnu`" in str(caught.value)
    assert not list(managed_python_dir(host_without_it).glob("cpython-*"))


def test_check_mode_says_the_python_would_be_installed_and_installs_nothing(host_without_it):
    result = build_env(PLAN, data=host_without_it, config=config(mirror="http://127.0.0.1:9"), check=True)
    assert (result.changed, result.check) == (True, True)
    assert result.reasons == [f"no Python {WANTED} on this host: it would be installed with uv"]
    assert not host_without_it.root.exists()


def test_install_never_refuses_in_one_line_naming_the_setting(host_without_it):
    with pytest.raises(EnvBuildError) as caught:
        build_env(PLAN, data=host_without_it, config=config(install="never"))
    assert caught.value.code == "python_missing"
    assert str(caught.value) == (f"no Python {WANTED} on this host and python.install is 'never' in the host config "
                                 f"({host_without_it.config_file}); install Python {WANTED} or set python.install: uv")

