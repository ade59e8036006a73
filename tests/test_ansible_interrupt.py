"""site.yml interrupted with SIGINT (Ctrl-C) while a host downloads its weights from a slow hub, then run again:
the second run completes, the demos are healthy, and the files that were complete at the interruption are neither
downloaded again (the hub's access log shows no second GET of them) nor rewritten (same inode and mtime)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tests.helpers.ansible_site import MODEL, built_wheel
from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env, playbook, recap, ssh_hosts_fixture  # noqa: F401
from tests.helpers.store_files import WEIGHTS, gets, interrupted_site, partial_files, weight_files

pytestmark = pytest.mark.slow
#: Bytes per second per connection: the demo's ~660 KB of weights take about a minute with two workers.
THROTTLE = 5_000


def fetching(uid: int) -> bool:
    """Whether a process of `uid` is running a `modelrig ... fetch`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid == uid and b"fetch" in (proc / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_interrupted_download_resumes_without_fetching_complete_files_again(ssh_hosts, tmp_path, tmp_path_factory):
    with interrupted_site(ssh_hosts, tmp_path, tmp_path_factory, throttle=THROTTLE) as first:
        host, store, complete, inventory = first.host, first.store, first.complete, first.inventory
        hub_dir, access = first.hub_dir, first.access
        assert first.returncode != 0, first.out[-4000:]
        hub_weights = {p.name for p in hub_dir.rglob("*") if p.suffix in WEIGHTS}
        missing = hub_weights - {key.split("/")[1] for key in complete}
        assert complete and missing, f"the interruption should leave some files complete, some not: {complete}"
        log_before = access.read_text()

        # At once, as a user would after Ctrl-C: the host may still be finishing the interrupted download.
        wheel = built_wheel()
        again = playbook(tmp_path, inventory, "site.yml", "-e", f"modelrig_wheel={wheel}")
        assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
        assert recap(again.stdout)["slow"]["failed"] == 0
        assert "health: ok, 2/2 demos healthy" in again.stdout
        log_after = access.read_text()[len(log_before):]

    after = weight_files(store)
    assert {key: after[key] for key in complete} == complete  # same inode, mtime and size: not rewritten
    for key in complete:
        assert gets(log_after, key.split("/")[1]) == 0, f"{key} was downloaded again:\n{log_after}"
    assert {key.split("/")[1] for key in after} == hub_weights
    assert partial_files(store) == []  # no temporary file left behind
    assert not fetching(host.uid)
    api = next(line.split()[1].strip('",') for line in again.stdout.splitlines() if f"{MODEL}/api  http" in line)
    client = OpenAI(base_url=api, api_key="unused-on-loopback", timeout=120)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=8)
    assert answer.choices[0].message.content.strip()
