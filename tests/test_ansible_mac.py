"""The Mac route as one inventory: site.yml --check with inventory/group_vars/mac_studio on an SSH test host that
reports seed 002's Mac Studio facts (Darwin, arm64: tests/fixtures/ansible_library), so the Darwin task files run
for real: it reports the Miniforge (MacOSX-arm64, the pinned release's published checksum), the toolkit env made
from Miniforge's Python, the Xcode tools check and the LaunchDaemon sudo check, then, planned on the controller
from the host's `sysctl`/`sw_vers` answers, Qwen-VL-Chat's env, download and demos; and it writes nothing. The
host's `xcode-select`, `sudo`, `sysctl` and `sw_vers` answer as a Mac's do (recorded or composed answers); macOS
itself, MPS and launchd never run here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.ansible_site import WHEEL_DIR
from tests.helpers.sshhosts import REPO_ROOT, debug_messages, playbook, recap, ssh_hosts_fixture  # noqa: F401
from tests.helpers.standins import served, write_miniforge_release

pytestmark = pytest.mark.slow
LIBRARY = f"{REPO_ROOT / 'library'}{os.pathsep}{REPO_ROOT / 'tests' / 'fixtures' / 'ansible_library'}"
#: What a Mac with the Xcode command line tools and the sudoers line for LaunchDaemons answers.
XCODE_SELECT = "#!/bin/sh\necho /Library/Developer/CommandLineTools\n"
SUDO = ("#!/bin/sh\necho \"$*\" >> \"$HOME/sudo-calls.log\"\n"
        "[ \"$*\" = \"-n -l launchctl\" ] && { echo /bin/launchctl; exit 0; }\n"
        "echo 'sudo: a password is required' >&2; exit 1\n")
#: What seed 002's Mac Studio answers to the commands `modelrig facts` runs there (composed in the format of macOS's
#: `sysctl` and `sw_vers`: no recording of an M2 Ultra's is among the shared fixtures): 192 GiB, 24 cores, 14.3.1.
SYSCTL = ("#!/bin/sh\nprintf 'hw.memsize: 206158430208\\nhw.ncpu: 24\\n"
          "machdep.cpu.brand_string: Apple M2 Ultra\\n'\n")
SW_VERS = "#!/bin/sh\nprintf 'ProductName:\\t\\tmacOS\\nProductVersion:\\t\\t14.3.1\\nBuildVersion:\\t\\t23D60\\n'\n"
#: The Mac Studio's free disk, as macOS's `df -Pk` prints it (1 TiB free of its 2 TB disk): the check-mode plan reads
#: it, and this machine's own free disk (which varies) must not decide whether the plan fits.
DF = ("#!/bin/sh\nprintf 'Filesystem 1024-blocks Used Available Capacity Mounted on\\n"
      "/dev/disk3s5 1942700360 869896264 1073741824 45%% /System/Volumes/Data\\n'\n")
#: What check mode on the fresh Mac says it would do for Qwen-VL-Chat (its two demos that run on MPS).
QWEN_VL_PREVIEW = {
    "model_env : Say which env each model would get.":
        ["would build env qwen-vl-chat (python 3.10 via conda, torch 2.14.1 mps)"],
    "model_weights : Say what each model's weights would be fetched from and converted into.":
        ["would fetch Qwen/Qwen-VL-Chat@main (19.4 GB) from https://huggingface.co"],
    "model_launch : Say which demos would start, on which port, under which supervisor.":
        ["would start demo chat on port 7860 (launchd job ai.modelrig.qwen-vl-chat.chat)",
         "would start demo api on port 7861 (launchd job ai.modelrig.qwen-vl-chat.api)"],
}


def _mac_host(ssh_hosts, tmp_path: Path, *, sudo: str = SUDO):
    """A test host whose sessions find a Mac's xcode-select and sudo first on PATH."""
    bin_dir = tmp_path / "mac-bin"
    bin_dir.mkdir()
    for name, text in (("xcode-select", XCODE_SELECT), ("sudo", sudo), ("sysctl", SYSCTL), ("sw_vers", SW_VERS),
                       ("df", DF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    host = ssh_hosts.add("mac", env={"PATH": f"/opt/mac-bin-{os.getpid()}:/usr/local/bin:/usr/bin:/bin"})
    shared = Path(f"/opt/mac-bin-{os.getpid()}")
    shutil.copytree(bin_dir, shared, dirs_exist_ok=True)
    return host, shared


def _inventory(ssh_hosts, tmp_path: Path, release_url: str) -> Path:
    """The mac_studio group with the repository's own group_vars; per host only the connection, the token, where
    the (loopback) Miniforge release is, and the data root the Mac would pick (its default, given here because the
    Linux test host's /root, where the role looks for AutoDL's disk, is unreadable to the login user; a Mac has
    no /root)."""
    home = ssh_hosts.hosts["mac"].home
    folder = tmp_path / "inventory"
    (folder / "group_vars").mkdir(parents=True)
    source = REPO_ROOT / "inventory" / "group_vars"
    if (source / "mac_studio").is_dir():
        shutil.copytree(source / "mac_studio", folder / "group_vars" / "mac_studio")
    else:
        shutil.copy(source / "mac_studio.yml", folder / "group_vars" / "mac_studio.yml")
    inventory = ssh_hosts.inventory(folder / "hosts.yml", hostvars={"mac": {
        "ansible_facts_modules": ["ansible.legacy.setup", "modelrig_recorded_mac_facts"],
        "vault_modelrig_hf_token": "hf_seed002testtoken", "miniforge_release_url": release_url,
        "modelrig_data_root": f"{home}/.local/share/modelrig", "modelrig_wheel_build_dir": str(WHEEL_DIR)}},
        groups={"mac_studio": ["mac"]})
    return inventory


def test_check_on_the_mac_inventory_reports_what_would_be_installed_and_writes_nothing(ssh_hosts, tmp_path):
    host, shared = _mac_host(ssh_hosts, tmp_path)
    write_miniforge_release(tmp_path / "release", "25.3.0-3", ["MacOSX-arm64"])
    try:
        with served(tmp_path / "release") as release:
            inventory = _inventory(ssh_hosts, tmp_path, release.url)
            before = sorted(p.name for p in host.home.iterdir())
            run = playbook(tmp_path, inventory, "site.yml", "--check", "--diff",
                           env={"ANSIBLE_LIBRARY": LIBRARY})
    finally:
        shutil.rmtree(shared)
    out = run.stdout
    assert run.returncode == 0, out[-6000:] + run.stderr[-2000:]
    counts = recap(out)["mac"]
    assert counts["failed"] == 0 and counts["changed"] > 0
    assert release.requests == ["HEAD /25.3.0-3/Miniforge3-25.3.0-3-MacOSX-arm64.sh"]  # check mode: HEAD only
    for task in ("system_packages : Look for the Xcode command line tools.",
                 "miniforge : Run the installer in batch mode into the prefix.",
                 "modelrig : Install the toolkit env when it is missing or its requirements changed.",
                 "model_launch : Ask whether the login user may run launchctl as root without a password"):
        assert f"TASK [{task}" in out, task
    assert "+channels:\n+- conda-forge" in out  # the prefix's .condarc it would write
    assert "+  supervisor: launchd\n+  launchd_domain: system" in out  # the engine's host config
    assert f"+  prefix: {host.home}/miniforge3\n" in out  # where the conda backend finds Miniforge
    assert (host.home / "sudo-calls.log").read_text() == "-n -l launchctl\n"
    after = sorted(p.name for p in host.home.iterdir()
                   if not p.name.startswith(".ansible") and p.name != "sudo-calls.log")
    assert after == before
    assert "hf_seed002testtoken" not in out
    messages = debug_messages(out, "mac")
    assert {task: messages.get(task) for task in QWEN_VL_PREVIEW} == QWEN_VL_PREVIEW


def test_without_passwordless_sudo_the_mac_route_names_the_sudoers_line(ssh_hosts, tmp_path):
    host, shared = _mac_host(ssh_hosts, tmp_path, sudo="#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    write_miniforge_release(tmp_path / "release", "25.3.0-3", ["MacOSX-arm64"])
    try:
        with served(tmp_path / "release") as release:
            run = playbook(tmp_path, _inventory(ssh_hosts, tmp_path, release.url), "site.yml", "--check",
                           env={"ANSIBLE_LIBRARY": LIBRARY})
    finally:
        shutil.rmtree(shared)
    assert run.returncode == 2
    assert (f'Add the line "{host.user} ALL=(root) NOPASSWD: /bin/launchctl, /usr/bin/install, /bin/rm" with '
            "visudo -f /etc/sudoers.d/modelrig") in run.stdout
    assert not (host.home / "miniforge3").exists()
