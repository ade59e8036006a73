"""Ctrl-C on the controller while a host downloads its weights through an async fetch: the play stops, the host's
engine goes on (Ansible does not stop remote jobs), and the next run finds it, names it (host and pid), stops it
and picks up where it stopped: files finished before the interruption are not downloaded again, no two engines
write one folder, and nothing is left running."""

from __future__ import annotations

import psutil
import pytest

from tests.helpers.ansible_site import built_wheel
from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env, playbook, recap, ssh_hosts_fixture  # noqa: F401
from tests.helpers.store_files import WEIGHTS, gets, interrupted_site, partial_files, weight_files

pytestmark = pytest.mark.slow
#: Bytes per second per connection: the demo's ~660 KB of weights take minutes.
THROTTLE = 4_000
TAGS = ("--tags", "toolkit,weights", "-e", '{"model_launch_to_restart": []}')


def engines(uid: int) -> list[int]:
    """Pids of `uid`'s `modelrig ... fetch` engines (not the Ansible module wrapping one)."""
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["uids"] and proc.info["uids"].real == uid and "fetch" in cmd and "modelrig" in " ".join(cmd) \
                and not any("AnsiballZ" in part or "async_wrapper" in part for part in cmd):
            found.append(proc.pid)
    return found


def test_an_engine_left_running_by_ctrl_c_is_named_stopped_and_resumed_by_the_next_run(
        ssh_hosts, tmp_path, tmp_path_factory):
    with interrupted_site(ssh_hosts, tmp_path, tmp_path_factory, throttle=THROTTLE, args=TAGS) as first:
        host, store, complete, inventory = first.host, first.store, first.complete, first.inventory
        left = engines(host.uid)
        assert len(left) == 1, left  # what Ctrl-C leaves behind: the host's engine still downloading

        again = playbook(tmp_path, inventory, "site.yml", *TAGS, "-e", f"modelrig_wheel={built_wheel()}")
        assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
        assert recap(again.stdout)["slow"]["failed"] == 0
        named = [line for line in again.stdout.splitlines() if "left by an interrupted run" in line]
        assert len(named) == 1 and "warning: slow: " in named[0] and f"(pid {left[0]}, running for " in named[0], \
            again.stdout[-6000:]
        log = first.access.read_text()
    assert not psutil.pid_exists(left[0]) or psutil.Process(left[0]).status() == psutil.STATUS_ZOMBIE
    assert engines(host.uid) == []
    after = weight_files(store)
    assert {key: after[key] for key in complete} == complete  # same inode, mtime and size: not rewritten
    for key in complete:
        assert gets(log, key.split("/")[1]) == 1, f"{key} was downloaded again"
    assert {key.split("/")[1] for key in after} == {p.name for p in first.hub_dir.rglob("*") if p.suffix in WEIGHTS}
    assert partial_files(store) == []
