"""The bare-host fixture itself: a Debian 12 root booted with systemd as init, reached over SSH as a login user
with sudo and nothing else, this machine's extra CAs in its system trust store; a reboot; a clean teardown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import barehost
from tests.helpers.barehost import (
    BARE_ROOT,
    LOGIN,
    BareHosts,
    available,
    bare_hosts_fixture,  # noqa: F401
    extra_cas,
    remove_stale_hosts,
)

pytestmark = pytest.mark.slow


def test_a_bare_host_boots_systemd_and_takes_a_sudo_login(bare_hosts: BareHosts, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "note").write_text("from the controller\n")
    host = bare_hosts.add("bare", nspawn_args=(f"--bind-ro={tmp_path / 'shared'}:/mnt/shared",))
    assert bare_hosts.ssh("bare", "cat /mnt/shared/note").stdout == "from the controller\n"
    assert host.root("systemctl is-system-running").stdout.strip() == "running"
    assert host.root("systemctl list-units --failed --plain --no-legend").stdout.strip() == ""
    assert bare_hosts.ssh("bare", "id -un").stdout.strip() == LOGIN
    assert bare_hosts.ssh("bare", "sudo -n id -u").stdout.strip() == "0"
    assert bare_hosts.ssh("bare", "sudo -n true").returncode == 0
    version = bare_hosts.ssh("bare", "python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip()
    assert version == "(3, 11)"
    # Nothing but Debian: no pyenv, no pip configuration or wheel folder, no certificate or pip variables.
    env = bare_hosts.ssh("bare", "env").stdout
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_", "UV_", "PYENV", "CURL_CA_BUNDLE"):
        assert name not in env
    assert bare_hosts.ssh("bare", "command -v pyenv uv pip pip3 conda", check=False).stdout == ""
    assert not (host.rootfs / "etc" / "pip.conf").exists() and not (host.rootfs / "opt" / "wheels").exists()
    # The machine's extra CAs are in the host's system store (and only where a corporate image puts them).
    extras = extra_cas(host.rootfs)
    assert extras == [], "update-ca-certificates should have added every extra CA of this machine"
    local = sorted(p.name for p in (host.rootfs / "usr/local/share/ca-certificates").iterdir())
    assert local == [f"site-ca-{i}.crt" for i in range(len(local))]


def test_a_reboot_starts_the_host_again_and_close_removes_it(tmp_path: Path) -> None:
    reason = available()
    if reason:
        pytest.fail(reason)
    with BareHosts(tmp_path / "hosts") as hosts:
        host = hosts.add("bare")
        hosts.ssh("bare", "touch ~/kept")
        host.root("touch /run/this-boot")  # /run is a fresh tmpfs on every boot
        first_init = host.init_pid()
        hosts.reboot("bare")
        assert host.boots == 2 and host.init_pid() != first_init
        assert host.root("systemctl is-system-running").stdout.strip() == "running"
        assert hosts.ssh("bare", "test -f ~/kept && id -un").stdout.strip() == LOGIN
        assert host.root("test -e /run/this-boot", check=False).returncode == 1
        folder, nspawn = host.folder, host.nspawn
        assert nspawn is not None
    assert nspawn.poll() is not None and not folder.exists()
    assert not _nspawns_of(folder)


def test_leftovers_of_an_interrupted_run_are_removed(tmp_path: Path) -> None:
    """A root whose creating process is gone, with its container still running, is stopped and removed."""
    reason = available()
    if reason:
        pytest.fail(reason)
    hosts = BareHosts(tmp_path / "hosts")
    host = hosts.add("orphan")
    # Pretend the run that made it died: its folder now names a pid that does not exist.
    orphan = host.folder.with_name(f"{_dead_pid()}-0")
    # nspawn keeps the root open by path: stop it, move the folder, boot the orphan from its new place.
    host.shutdown()
    host.folder.rename(orphan)
    host.folder = orphan
    host.boot()
    assert _nspawns_of(orphan)
    hosts.hosts.clear()  # this run forgets it, as a killed run would
    barehost._LIVE.remove(host)
    removed = remove_stale_hosts()
    assert orphan in removed and not orphan.exists() and not _nspawns_of(orphan)
    assert BARE_ROOT.is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid = proc.pid
    assert not Path(f"/proc/{pid}").exists()
    return pid


def _nspawns_of(folder: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"systemd-nspawn") and str(folder / "root").encode() in argv:
                found.append(int(proc.name))
    return found
