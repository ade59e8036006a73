"""The miniforge and rust_toolchain roles over SSH. Neither can install here (no conda channels, no rustup host
is reachable), so they run in check mode, and for real only up to their refusals: an installer whose sha256
differs is refused before it runs, and a missing checksum is refused before any download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.sshhosts import playbook, recap, ssh_hosts_fixture  # noqa: F401

pytestmark = pytest.mark.slow
NO_ENGINE = {"toolkit_env": "/nonexistent", "data_root": "/nonexistent", "environment": {}, "proxy_environment": {},
             "ready": False}


def _book(tmp: Path, *roles: dict) -> Path:
    path = tmp / "toolchains.yml"
    path.write_text(yaml.safe_dump([{"name": "Toolchains.", "hosts": "all", "gather_facts": True,
                                     "roles": list(roles)}], sort_keys=False))
    return path


def _installer(tmp: Path) -> tuple[Path, str]:
    path = tmp / "Miniforge3-installer.sh"
    path.write_text("#!/bin/sh\necho 'installer stand-in: never run by these tests' >&2\nexit 1\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def rustup_mirror(tmp_path: Path) -> Iterator[str]:
    """A RUSTUP_UPDATE_ROOT mirror on loopback holding rustup-init 1.27.1 stand-ins (never run)."""
    root = tmp_path / "mirror"
    for target in ("x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"):
        folder = root / "rustup" / "archive" / "1.27.1" / target
        folder.mkdir(parents=True)
        (folder / "rustup-init").write_bytes(b"rustup-init stand-in")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_check_mode_reports_the_installs_and_writes_nothing(ssh_hosts, tmp_path, rustup_mirror):
    host = ssh_hosts.add("tools")
    installer, sha = _installer(tmp_path)
    rustup_sha = hashlib.sha256(b"rustup-init stand-in").hexdigest()
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    book = _book(tmp_path,
                 {"role": "miniforge", "miniforge_installer_file": str(installer), "miniforge_sha256":
                  {"Linux-x86_64": sha, "Linux-aarch64": sha}, "miniforge_download_dir": str(host.home)},
                 {"role": "rust_toolchain", "rust_toolchain_needed": "true", "rust_toolchain_engine": NO_ENGINE,
                  "rust_toolchain_update_root": f"{rustup_mirror}/rustup",
                  "rust_toolchain_dist_server": rustup_mirror, "rust_toolchain_download_dir": str(host.home),
                  "rust_toolchain_rustup_sha256": {"x86_64-unknown-linux-gnu": rustup_sha,
                                                   "aarch64-unknown-linux-gnu": rustup_sha}})
    run = playbook(tmp_path, inventory, str(book), "--check", "--diff")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert recap(run.stdout)["tools"]["changed"] >= 3  # installer copy, batch install, .condarc; rustup
    assert "TASK [miniforge : Run the installer in batch mode.]" in run.stdout
    assert "TASK [rust_toolchain : Install the pinned toolchain with rustup.]" in run.stdout
    assert "+channels:\n+- conda-forge" in run.stdout  # the .condarc it would write
    assert not (host.home / "miniforge3").exists() and not (host.home / ".cargo").exists()


def test_an_installer_with_another_checksum_is_refused_before_it_runs(ssh_hosts, tmp_path):
    host = ssh_hosts.add("tools")
    installer, _ = _installer(tmp_path)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    pinned = hashlib.sha256(b"the real installer").hexdigest()
    book = _book(tmp_path, {"role": "miniforge", "miniforge_installer_file": str(installer), "miniforge_sha256":
                            {"Linux-x86_64": pinned, "Linux-aarch64": pinned},
                            "miniforge_download_dir": str(host.home)})
    run = playbook(tmp_path, inventory, str(book))
    assert run.returncode == 2
    assert f"not {pinned}: refusing to run it" in run.stdout
    assert "TASK [miniforge : Run the installer in batch mode.]" not in run.stdout
    assert not (host.home / "miniforge3").exists()


def test_a_missing_checksum_is_refused_naming_the_variable(ssh_hosts, tmp_path):
    ssh_hosts.add("tools")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    run = playbook(tmp_path, inventory, str(_book(tmp_path, {"role": "miniforge"})))
    assert run.returncode == 2
    assert "miniforge_sha256[Linux-" in run.stdout and "must be the sha256 of Miniforge3-24.11.3-0-Linux-" in run.stdout
    assert "Download the installer" not in run.stdout
