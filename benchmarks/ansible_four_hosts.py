"""site.yml on four SSH test hosts in one run, then again with everything in place (changed=0), with the ansible.cfg
of this checkout (forks, ControlPersist); the hosts as benchmarks/ansible_bench.py makes them. Writes its section of
BENCHMARKS.md. Needs root.

Usage: `.venv/bin/python benchmarks/ansible_four_hosts.py [--no-write]`
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.ansible_bench import cpu_group, demo_hub, fleet, slowest_tasks  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from tests.helpers.sshhosts import available  # noqa: E402

SECTION = "## Ansible, four hosts (benchmarks/ansible_four_hosts.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    reason = available()
    if reason:
        raise SystemExit(reason)
    load_before = os.getloadavg()[0]
    cpu: dict[str, float] = {}
    with cpu_group() as group, tempfile.TemporaryDirectory(prefix="modelrig-fourhosts-") as name:
        tmp = Path(name)
        with demo_hub(tmp / "hub") as (url, token):
            first, second, caches, changed, _ = fleet(tmp, url, token, ["a", "b", "c", "d"],
                                                      profile=tmp / "second.json", cpu=cpu, group=group)
            slowest = slowest_tasks(tmp / "second.json")
    table = "\n".join([
        SECTION, "",
        "The demo model on four hosts in one site.yml run (each host a Unix user with its own sshd on 127.0.0.N of "
        "this 2-core machine, as in the section above), then the same run again with everything in place; "
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is shared "
        "with other developers' builds and tests).", "",
        "| what | seconds |", "|---|---|",
        f"| first site.yml, four hosts (uv caches {caches}) | {first:.1f} |",
        f"| second site.yml, four hosts (changed={changed}) | {second:.1f} |",
        f"| CPU of the second run: the controller (ansible-playbook, its workers, ssh) | {cpu['controller']:.1f} |",
        *([f"| CPU of the second run: the controller and the four hosts (sshd sessions, modules, the engine) | "
           f"{cpu['all']:.1f} |"] if group is not None else []), "",
        "CPU is read from the process accounting of ansible-playbook and, for the hosts, from a cpuacct cgroup "
        "holding the benchmark and the test hosts' sshds (what the machine's load does not change, unlike wall "
        "time). With everything in place each host makes six module runs: the facts, the system packages query, one "
        "modelrig_files run for the data root's folders and files and one for the local fact, one engine run "
        "(the model_state role's `modelrig state`: every stage's own check and the lock, in one process) and "
        "the lock copied back; the stage roles skip every settled model.", "",
        "The second run's slowest tasks (benchmarks/callback_plugins/task_seconds.py): the slowest host's seconds "
        "in each (hosts run side by side, so these overlap and do not add up to the run).", "",
        "| task | slowest host (s) |", "|---|---:|",
        *[f"| {name} | {host:.1f} |" for name, _, host in sorted(slowest, key=lambda t: -t[2])],
    ])
    publish(SECTION, table, write=not args.no_write)


if __name__ == "__main__":
    main()
