"""What a host's weight store holds while a download runs (the Ansible interrupt tests): complete weight files,
huggingface_hub's partial ones, and how often a hub's access log served a file; and a site.yml run interrupted
with Ctrl-C mid-download."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.ansible_site import demo_knobs
from tests.helpers.hub import demo_repos, served
from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env

#: Suffixes of the demo model's weight files.
WEIGHTS = (".bin", ".pth")


def weight_files(store: Path) -> dict[str, tuple[int, int, int]]:
    """Complete weight files in the store (renamed into place): {repo/file: (inode, mtime_ns, size)}."""
    found = {}
    for path in store.rglob("*"):
        if path.suffix in WEIGHTS and ".cache" not in path.parts and path.is_file():
            stat = path.stat()
            found[f"{path.parent.name}/{path.name}"] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return found


def partial_files(store: Path) -> list[Path]:
    """Downloads in progress: huggingface_hub's temporary `.incomplete` files."""
    return [p for p in store.rglob("*.incomplete") if p.is_file()] if store.is_dir() else []


def gets(log: str, name: str) -> int:
    """How many GET requests of a file named `name` the hub's access log holds."""
    return sum(1 for line in log.splitlines() if '"GET ' in line and f"/{name} " in line)


@dataclass
class Interrupted:
    """A site.yml run on one test host stopped with Ctrl-C mid-download (`interrupted_site`), its hub still up."""

    host: Any
    store: Path
    inventory: Path
    hub_dir: Path
    access: Path
    #: The weight files complete when the play was interrupted, and the interrupted play's output.
    complete: dict[str, tuple[int, int, int]]
    out: str
    returncode: int


@contextmanager
def interrupted_site(ssh_hosts: Any, tmp_path: Path, tmp_path_factory: Any, *, throttle: int,
                     args: tuple[str, ...] = ()) -> Iterator[Interrupted]:
    """Start site.yml (with `args`) on a fresh test host downloading the demo from a hub throttled to `throttle`
    bytes per second per connection; once one weight file is complete and another is downloading, send SIGINT to
    the play's session, as Ctrl-C in a terminal does. The hub keeps serving inside the `with` block."""
    hub_dir = demo_repos(tmp_path_factory, tmp_path / "hub")
    tokens = hub_dir / ".modelrig-hub-tokens"
    access = tmp_path / "access.log"
    host = ssh_hosts.add("slow")
    store = host.home / "modelrig" / "store"
    with served(hub_dir, "--token-file", str(tokens), "--throttle", str(throttle), access_log=access) as url:
        knobs = {**demo_knobs(tmp_path, host, url), "modelrig_hf_token": tokens.read_text().split()[0]}
        inventory = ssh_hosts.inventory(tmp_path / "hosts.yml", hostvars={"slow": knobs})
        command = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO_ROOT / "playbooks" / "site.yml"),
                   *args]
        # Its own session, as a terminal's foreground job: Ctrl-C reaches ansible-playbook and its ssh clients.
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=ansible_env(tmp_path), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 1200
        while not (weight_files(store) and partial_files(store)):
            assert first.poll() is None, f"site.yml ended before the download could be interrupted:\n" \
                                         f"{first.communicate()[0][-6000:]}"
            assert time.monotonic() < deadline, "no download in progress within 20 minutes"
            time.sleep(0.05)
        complete = weight_files(store)
        os.killpg(first.pid, signal.SIGINT)
        out = first.communicate(timeout=120)[0]
        assert "User interrupted execution" in out, out[-4000:]
        yield Interrupted(host=host, store=store, inventory=inventory, hub_dir=hub_dir, access=access,
                          complete=complete, out=out, returncode=first.returncode)
