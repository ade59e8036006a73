"""The miniforge and rust_toolchain roles over SSH, installing for real from stand-in installers served on loopback
(tests/helpers/standins.py: the real installers' command-line interfaces, a prefix laid out, calls recorded): the
right checksum installs, a wrong one is refused before anything runs, a mirror's installer is checked against the
checksum published at the origin, a local installer file for air-gapped hosts, and a second run changes nothing.
The real Miniforge and rustup downloads are unreachable here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.previews import H100, rust_manifest
from tests.helpers.sshhosts import playbook, recap, ssh_hosts_fixture  # noqa: F401
from tests.helpers.standins import served, sha256_of, write_miniforge_release, write_rustup_archive

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
NO_ENGINE = {"toolkit_env": "/nonexistent", "data_root": "/nonexistent", "environment": {}, "proxy_environment": {},
             "ready": False}
#: A release the role's table of published checksums does not list: its checksum is read from the origin.
TEST_VERSION = "0.0.0-1"
LINUX = ["Linux-x86_64", "Linux-aarch64"]
LINUX_TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]


def _book(tmp: Path, *roles: dict, play_vars: dict | None = None) -> Path:
    path = tmp / "toolchains.yml"
    path.write_text(yaml.safe_dump([{"name": "Toolchains.", "hosts": "all", "gather_facts": True,
                                     "vars": play_vars or {}, "roles": list(roles)}], sort_keys=False))
    return path


def _miniforge(host, **extra) -> dict:
    return {"role": "miniforge", "miniforge_download_dir": str(host.home), **extra}


def _failure(run) -> str:
    return run.stdout[-4000:] + run.stderr[-2000:]


def test_the_pinned_releases_ship_a_published_checksum_for_every_platform():
    forge = yaml.safe_load((REPO / "roles/miniforge/vars/main.yml").read_text())["miniforge_published_sha256"]
    pinned = yaml.safe_load((REPO / "roles/miniforge/defaults/main.yml").read_text())["miniforge_version"]
    assert sorted(forge[pinned]) == ["Linux-aarch64", "Linux-x86_64", "MacOSX-arm64", "MacOSX-x86_64"]
    assert forge[pinned]["MacOSX-arm64"] == "16205127ac2b5701881636229b7fe42e1f961007513b8673f8064da331e496a0"
    rust_role = REPO / "roles" / "rust_toolchain"
    rust = yaml.safe_load((rust_role / "vars/main.yml").read_text())["rust_toolchain_published_sha256"]
    rustup = yaml.safe_load((rust_role / "defaults/main.yml").read_text())["rust_toolchain_rustup_version"]
    assert sorted(rust[rustup]) == ["aarch64-apple-darwin", "aarch64-unknown-linux-gnu", "x86_64-apple-darwin",
                                    "x86_64-unknown-linux-gnu"]
    linux = rust[rustup]["x86_64-unknown-linux-gnu"]
    assert linux == "4acc9acc76d5079515b46346a485974457b5a79893cfb01112423c89aeb5aa10"


def test_the_pinned_release_is_checked_against_the_role_table_without_any_setting(ssh_hosts, tmp_path):
    """Nothing set but where the release lives: the stand-in is not the real 25.3.0-3 installer, so the role's
    published checksum refuses it before it runs."""
    host = ssh_hosts.add("tools")
    write_miniforge_release(tmp_path / "origin", "25.3.0-3", LINUX)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin:
        run = playbook(tmp_path, inventory, str(_book(tmp_path, _miniforge(host, miniforge_release_url=origin.url))))
    assert run.returncode == 2, _failure(run)
    assert "did not match 1b57f8cb991982063f79b56176881093abb1dc76d73fda32102afde60585b5a1" in run.stdout
    assert not any(path.endswith(".sha256") for path in origin.requests)  # the table's checksum, not the file's
    assert not (host.home / "miniforge3").exists()
    assert "Run the installer in batch mode" not in run.stdout


def test_an_installer_with_the_origin_checksum_installs_and_a_second_run_changes_nothing(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    write_miniforge_release(tmp_path / "origin", TEST_VERSION, LINUX)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin:
        book = _book(tmp_path, _miniforge(host, miniforge_version=TEST_VERSION, miniforge_release_url=origin.url,
                                          miniforge_channels=["https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/conda-forge"]))
        run = playbook(tmp_path, inventory, str(book))
        assert run.returncode == 0, _failure(run)
        again = playbook(tmp_path, inventory, str(book))
    assert again.returncode == 0 and recap(again.stdout)["tools"]["changed"] == 0, _failure(again)
    prefix = host.home / "miniforge3"
    assert (prefix / "bin" / "conda").is_file()
    assert yaml.safe_load((prefix / ".condarc").read_text()) == {
        "channels": ["https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/conda-forge"], "show_channel_urls": True}
    assert not (host.home / ".condarc").exists()  # the user's own .condarc is never written
    installer = f"/{TEST_VERSION}/Miniforge3-{TEST_VERSION}-Linux-x86_64.sh"
    assert origin.requests == [installer + ".sha256", installer]  # the second run downloads nothing


def test_a_mirror_installer_is_checked_against_the_origin_checksum(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    write_miniforge_release(tmp_path / "origin", TEST_VERSION, LINUX)
    mirror = write_miniforge_release(tmp_path / "mirror", TEST_VERSION, LINUX, publish_sha256=False)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin, served(tmp_path / "mirror") as mirror_server:
        book = _book(tmp_path, _miniforge(host, miniforge_version=TEST_VERSION, miniforge_release_url=origin.url,
                                          miniforge_mirror_url=mirror_server.url + "/"))
        run = playbook(tmp_path, inventory, str(book))
        assert run.returncode == 0, _failure(run)
        assert (host.home / "miniforge3" / "bin" / "conda").is_file()
        installer = f"/{TEST_VERSION}/Miniforge3-{TEST_VERSION}-Linux-x86_64.sh"
        assert origin.requests == [installer + ".sha256"] and mirror_server.requests == [installer]

        # A mirror serving another file under the same name is refused: nothing runs, nothing is installed.
        other = ssh_hosts.add("other")
        inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
        (mirror / f"Miniforge3-{TEST_VERSION}-Linux-x86_64.sh").write_text("#!/bin/bash\necho tampered\n")
        run = playbook(tmp_path, inventory, str(_book(tmp_path, _miniforge(
            other, miniforge_version=TEST_VERSION, miniforge_release_url=origin.url,
            miniforge_mirror_url=mirror_server.url))), "--limit", "other")
    assert run.returncode == 2, _failure(run)
    published = sha256_of(tmp_path / "origin" / TEST_VERSION / f"Miniforge3-{TEST_VERSION}-Linux-x86_64.sh")
    assert f"did not match {published}" in run.stdout
    assert not (other.home / "miniforge3").exists()
    assert not (other.home / f"Miniforge3-{TEST_VERSION}-Linux-x86_64.sh").exists()


def test_a_local_installer_file_installs_and_one_with_another_checksum_is_not_even_copied(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    release = write_miniforge_release(tmp_path / "release", TEST_VERSION, LINUX, publish_sha256=False)
    installer = release / f"Miniforge3-{TEST_VERSION}-Linux-x86_64.sh"
    pins = {p: sha256_of(release / f"Miniforge3-{TEST_VERSION}-{p}.sh") for p in LINUX}
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    ok = playbook(tmp_path, inventory, str(_book(tmp_path, _miniforge(
        host, miniforge_version=TEST_VERSION, miniforge_installer_file=str(installer), miniforge_sha256=pins,
        miniforge_release_url="http://127.0.0.1:9/unreachable"))))
    assert ok.returncode == 0, _failure(ok)
    assert (host.home / "miniforge3" / "bin" / "conda").is_file()

    other = ssh_hosts.add("other")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    pinned = "0" * 64
    run = playbook(tmp_path, inventory, str(_book(tmp_path, _miniforge(
        other, miniforge_version=TEST_VERSION, miniforge_installer_file=str(installer),
        miniforge_sha256={p: pinned for p in LINUX}))), "--limit", "other")
    assert run.returncode == 2, _failure(run)
    assert f"miniforge_installer_file {installer} has sha256 {pins['Linux-x86_64']}, not {pinned}" in run.stdout
    assert not (other.home / installer.name).exists() and not (other.home / "miniforge3").exists()


def test_a_checksum_that_is_not_a_sha256_is_refused_naming_the_variable(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    run = playbook(tmp_path, inventory, str(_book(tmp_path, _miniforge(
        host, miniforge_sha256={p: "sha256:abc" for p in LINUX}))))
    assert run.returncode == 2
    assert "miniforge_sha256[Linux-" in run.stdout and "must be the sha256 of Miniforge3-25.3.0-3-Linux-" in run.stdout
    assert "Download the installer" not in run.stdout


def _rust(host, update_root: str, **extra) -> dict:
    return {"role": "rust_toolchain", "rust_toolchain_engine": NO_ENGINE, "rust_toolchain_update_root": update_root,
            "rust_toolchain_dist_server": update_root.rsplit("/", 1)[0], "rust_toolchain_download_dir": str(host.home),
            **extra}


def test_rustup_installs_the_pinned_toolchain_from_a_mirror_checked_against_the_origin(ssh_hosts, tmp_path):
    """`rust_toolchain_needed: true` (a YAML boolean) installs; rustup-init comes from the mirror, its checksum
    from the origin's rustup-init.sha256 (a rustup release the role's table does not list)."""
    host = ssh_hosts.add("tools")
    write_rustup_archive(tmp_path / "origin" / "rustup", "0.0.1", LINUX_TARGETS)
    write_rustup_archive(tmp_path / "mirror" / "rustup", "0.0.1", LINUX_TARGETS)
    for target in LINUX_TARGETS:
        (tmp_path / "mirror" / "rustup" / "archive" / "0.0.1" / target / "rustup-init.sha256").unlink()
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin, served(tmp_path / "mirror") as mirror:
        book = _book(tmp_path, _rust(host, f"{mirror.url}/rustup", rust_toolchain_needed=True,
                                     rust_toolchain_rustup_version="0.0.1",
                                     rust_toolchain_checksum_root=f"{origin.url}/rustup"))
        run = playbook(tmp_path, inventory, str(book))
        assert run.returncode == 0, _failure(run)
        again = playbook(tmp_path, inventory, str(book))
    assert again.returncode == 0 and recap(again.stdout)["tools"]["changed"] == 0, _failure(again)
    call = json.loads((host.home / ".cargo" / "rustup-init-call.json").read_text())
    assert call == {"args": ["-y", "--no-modify-path", "--profile", "minimal", "--default-toolchain", "1.79.0"],
                    "RUSTUP_DIST_SERVER": mirror.url, "RUSTUP_UPDATE_ROOT": f"{mirror.url}/rustup"}
    assert (host.home / ".rustup" / "toolchains" / "1.79.0-x86_64-unknown-linux-gnu").is_dir()
    assert origin.requests == ["/rustup/archive/0.0.1/x86_64-unknown-linux-gnu/rustup-init.sha256"]
    assert mirror.requests == ["/rustup/archive/0.0.1/x86_64-unknown-linux-gnu/rustup-init"]


def test_rustup_init_of_the_pinned_release_is_checked_against_the_role_table(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    write_rustup_archive(tmp_path / "mirror" / "rustup", "1.29.0", LINUX_TARGETS)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "mirror") as mirror:
        run = playbook(tmp_path, inventory, str(_book(tmp_path, _rust(host, f"{mirror.url}/rustup",
                                                                      rust_toolchain_needed="true"))))
    assert run.returncode == 2, _failure(run)
    assert "did not match 4acc9acc76d5079515b46346a485974457b5a79893cfb01112423c89aeb5aa10" in run.stdout
    assert not (host.home / ".cargo").exists()


@pytest.mark.parametrize("needed", [False, "false"])
def test_rust_not_needed_installs_nothing(ssh_hosts, tmp_path, needed):
    host = ssh_hosts.add("tools")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    run = playbook(tmp_path, inventory, str(_book(tmp_path, _rust(host, "http://127.0.0.1:9/rustup",
                                                                  rust_toolchain_needed=needed))))
    assert run.returncode == 0, _failure(run)
    assert "Install Rust." in run.stdout and "skipping: [tools]" in run.stdout
    assert not (host.home / ".cargo").exists()


def test_a_rust_needed_value_that_is_not_auto_true_or_false_is_refused(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    run = playbook(tmp_path, inventory, str(_book(tmp_path, _rust(host, "http://127.0.0.1:9/rustup",
                                                                  rust_toolchain_needed="sometimes"))))
    assert run.returncode == 2
    assert "rust_toolchain_needed" in run.stdout and "sometimes" in run.stdout


def test_check_mode_reports_the_installs_and_writes_nothing(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    write_miniforge_release(tmp_path / "origin" / "miniforge", TEST_VERSION, LINUX)
    write_rustup_archive(tmp_path / "origin" / "rustup", "0.0.1", LINUX_TARGETS)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin:
        book = _book(tmp_path,
                     _miniforge(host, miniforge_version=TEST_VERSION, miniforge_release_url=f"{origin.url}/miniforge"),
                     _rust(host, f"{origin.url}/rustup", rust_toolchain_needed=True,
                           rust_toolchain_rustup_version="0.0.1", rust_toolchain_checksum_root=f"{origin.url}/rustup"))
        run = playbook(tmp_path, inventory, str(book), "--check", "--diff")
    assert run.returncode == 0, _failure(run)
    assert recap(run.stdout)["tools"]["changed"] >= 4  # download, batch install, .condarc; rustup-init, toolchain
    assert "TASK [miniforge : Run the installer in batch mode into the prefix.]" in run.stdout
    assert "TASK [rust_toolchain : Install the pinned toolchain with rustup.]" in run.stdout
    assert "+channels:\n+- conda-forge" in run.stdout  # the .condarc it would write
    assert not (host.home / "miniforge3").exists() and not (host.home / ".cargo").exists()
    assert not list(host.home.glob("Miniforge3-*")) and not list(host.home.glob("rustup-init*"))


@pytest.mark.parametrize(("model", "installs"), [("rust-tiny-ziya", True), ("qwen-vl-chat", False)])
def test_check_mode_on_a_fresh_host_asks_the_controllers_planner_whether_rust_is_needed(ssh_hosts, tmp_path, model,
                                                                                         installs):
    """No toolkit env yet (check mode on a fresh host): `auto` asks the planner on the controller, which the
    modelrig role describes in modelrig_engine.preview; a model building tokenizers from source gets rustup."""
    host = ssh_hosts.add("tools")
    write_rustup_archive(tmp_path / "origin" / "rustup", "0.0.1", LINUX_TARGETS)
    engine = {**NO_ENGINE, "preview": {
        "command": [sys.executable, "-m", "modelrig.orchestrate.preview"],
        "environment": {"PYTHONPATH": str(REPO / "src"), "MODELRIG_MANIFESTS": str(rust_manifest(tmp_path / "m"))},
        "input": {**H100, "config": {}}}}
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "origin") as origin:
        run = playbook(tmp_path, inventory, str(_book(tmp_path, {
            **_rust(host, f"{origin.url}/rustup", rust_toolchain_rustup_version="0.0.1",
                    rust_toolchain_checksum_root=f"{origin.url}/rustup"),
            "rust_toolchain_engine": engine, "rust_toolchain_models": [model]})), "--check")
    assert run.returncode == 0, _failure(run)
    assert ("TASK [rust_toolchain : Install the pinned toolchain with rustup.]" in run.stdout) is installs
    assert recap(run.stdout)["tools"]["changed"] == (2 if installs else 0), _failure(run)
    assert not (host.home / ".cargo").exists()


def test_the_miniforge_download_goes_through_modelrig_proxy(ssh_hosts, tmp_path):
    """site.yml installs Miniforge before the modelrig role describes the engine: the download still takes the proxy
    from modelrig_proxy. The proxy is a loopback server that answers absolute-URL requests from its folder."""
    host = ssh_hosts.add("tools")
    write_miniforge_release(tmp_path / "proxy" / "http:" / "miniforge.invalid", TEST_VERSION, LINUX)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    with served(tmp_path / "proxy") as proxy:
        book = _book(tmp_path, _miniforge(host, miniforge_version=TEST_VERSION,
                                          miniforge_release_url="http://miniforge.invalid"),
                     play_vars={"modelrig_proxy": {"source_file": "", "http_proxy": proxy.url,
                                                   "https_proxy": proxy.url, "no_proxy": ""}})
        run = playbook(tmp_path, inventory, str(book))
    assert run.returncode == 0, _failure(run)
    installer = f"http://miniforge.invalid/{TEST_VERSION}/Miniforge3-{TEST_VERSION}-Linux-x86_64.sh"
    assert proxy.requests == [installer + ".sha256", installer]
    assert (host.home / "miniforge3" / "bin" / "conda").is_file()
