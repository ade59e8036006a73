"""What a second site.yml run (everything in place, changed=0) costs each host: its seconds and the module runs on
each host, i.e. the tasks that were ok there, not skipped, less those that run nothing on it (set_fact, assert,
debug, include/import, include_vars, meta); by role. The hosts as benchmarks/ansible_bench.py makes them. Prints
JSON, writes nothing. Needs root.

Usage: `.venv/bin/python benchmarks/ansible_module_runs.py [--hosts N] [--profile FILE]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.ansible_bench import demo_hub, fleet  # noqa: E402
from tests.helpers.sshhosts import available  # noqa: E402

#: Actions that run nothing on the host.
CONTROLLER_ONLY = {"set_fact", "assert", "debug", "include_tasks", "import_tasks", "include_role", "import_role",
                   "include_vars", "meta", "validate_argument_spec"}


def module_runs(profile: Path) -> dict[str, dict[str, object]]:
    """Per host: module-running tasks that were ok there, by role (the part before ' : ' of the task's name), their
    module runs (a loop's items), the task names of the modelrig and host_facts roles; tasks delegated to the
    controller are counted apart (`on_controller`)."""
    data = json.loads(profile.read_text())
    hosts: dict[str, dict[str, object]] = {}
    for name, host, action, count, delegate_to in data["runs"]:
        if action.rsplit(".", 1)[-1] in CONTROLLER_ONLY:
            continue
        entry = hosts.setdefault(host, {"tasks": 0, "module_runs": 0, "by_role": Counter(), "toolkit_tasks": [],
                                        "on_controller": []})
        if delegate_to in ("localhost", "127.0.0.1"):
            entry["on_controller"].append(name)
            continue
        role = name.split(" : ", 1)[0] if " : " in name else "(play)"
        entry["tasks"] += 1
        entry["module_runs"] += count
        entry["by_role"][role] += 1
        if role in ("modelrig", "host_facts"):
            entry["toolkit_tasks"].append(name)
    return hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1, help="test hosts in the run (default 1)")
    parser.add_argument("--profile", type=Path, help="also keep the second run's task seconds (JSON) here")
    args = parser.parse_args()
    reason = available()
    if reason:
        raise SystemExit(reason)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="modelrig-moduleruns-") as name:
        tmp = Path(name)
        with demo_hub(tmp / "hub") as (url, token):
            names = [f"h{i}" for i in range(args.hosts)]
            first, second, caches, changed, _ = fleet(tmp, url, token, names, profile=tmp / "second.json")
            runs = module_runs(tmp / "second.json")
            if args.profile:
                shutil.copy(tmp / "second.json", args.profile)
    print(json.dumps({"hosts": args.hosts, "first_s": round(first, 1), "second_s": round(second, 1),
                      "second_changed": changed, "uv_caches": caches,
                      "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                      "module_runs": {h: {**e, "by_role": dict(e["by_role"])} for h, e in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
