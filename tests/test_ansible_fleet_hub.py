"""A fleet downloads each weight file once: four SSH test hosts provisioned by one site.yml run with the controller
as the fleet's pull-through hub (`modelrig_fleet_hub: localhost`), the upstream a reference hub with an access log."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from modelrig.hub.layout import open_repo, resolve_revision
from tests.helpers.ansible_site import built_wheel, demo_knobs, free_port
from tests.helpers.hub import logged_requests, served
from tests.helpers.sshhosts import SshHosts, available, playbook, recap

pytestmark = pytest.mark.slow
HOSTS = ("h1", "h2", "h3", "h4")
TAGS = "toolkit,weights"
#: Only the toolkit and the weights run (no model env, no demos), so no model service is restarted when weights
#: change: model_launch's handler would try to restart demos never rendered.
NO_RESTART = ("-e", '{"model_launch_to_restart": []}')
#: The fleet's ModelScope token: a secret of its own, never in the play's output.
MS_TOKEN = "ms-fleet-7d1e0b"


@dataclass
class FleetRun:
    hosts: SshHosts
    inventory: Path
    tmp: Path
    upstream_dir: Path
    upstream_log: Path
    hub_dir: Path
    first: subprocess.CompletedProcess[str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        wheel = built_wheel()
        return playbook(self.tmp, self.inventory, "site.yml", "--tags", TAGS, *NO_RESTART, "-e",
                        f"modelrig_wheel={wheel}", *args)


def file_gets(log: Path) -> Counter[str]:
    """How often each file's bytes were asked for (LFS objects and small files; redirects carry none)."""
    return file_gets_of(logged_requests(log))


def file_gets_of(requests: list[tuple[str, str, int, str]]) -> Counter[str]:
    """`file_gets` of some logged requests."""
    counts: Counter[str] = Counter()
    for method, path, status, _ in requests:
        if method == "GET" and status != 302 and (path.startswith("/_lfs/") or "/resolve/" in path or "/repo?" in path):
            counts[path.split("?", 1)[0] if "/repo?" not in path else path] += 1
    return counts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRun]:
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("fleet-hub")
    upstream_dir = tmp / "upstream"
    subprocess.run([sys.executable, "-m", "modelrig", "hub", "make-tiny", str(upstream_dir), "--only",
                    "modelrig-tiny/llama-meta", "--only", "modelrig-tiny/ziya-delta"], check=True, capture_output=True)
    token = (upstream_dir / ".modelrig-hub-tokens").read_text().split()[0]
    log = tmp / "upstream.log"
    hub_dir = tmp / "fleet-hub"
    with served(upstream_dir, "--token-file", str(upstream_dir / ".modelrig-hub-tokens"), access_log=log) as url, \
            SshHosts(tmp / "ssh-hosts") as hosts:
        for name in HOSTS:
            hosts.add(name)
        inventory = hosts.inventory(tmp / "hosts.yml", hostvars={
            name: {**demo_knobs(tmp, hosts.hosts[name], url, f"manifests-{name}"), "modelrig_hf_token": token}
            for name in HOSTS}, group_vars={
            "modelrig_fleet_hub": "localhost", "modelrig_fleet_hub_port": free_port("127.0.0.1"),
            "modelrig_fleet_hub_dir": str(hub_dir), "modelrig_fleet_hub_access_log": True,
            "modelrig_modelscope_token": MS_TOKEN})
        first = playbook(tmp, inventory, "site.yml", "--tags", TAGS, *NO_RESTART)
        (tmp / "first.log").write_text(first.stdout + first.stderr)
        try:
            yield FleetRun(hosts, inventory, tmp, upstream_dir, log, hub_dir, first)
        finally:
            subprocess.run([sys.executable, "-m", "modelrig", "hub", "stop", str(hub_dir)], check=False,
                           capture_output=True)


def hub_status(hub_dir: Path) -> dict[str, object]:
    """`modelrig hub status DIR --json`: the hub as its supervisor reports it."""
    done = subprocess.run([sys.executable, "-m", "modelrig", "hub", "status", str(hub_dir), "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def gone(pid: int, wait: float = 10.0) -> bool:
    ends = time.monotonic() + wait
    while time.monotonic() < ends:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_every_weight_file_is_asked_of_the_upstream_once_and_every_host_verifies(fleet: FleetRun) -> None:
    assert fleet.first.returncode == 0, fleet.first.stdout[-8000:] + fleet.first.stderr[-3000:]
    counts = recap(fleet.first.stdout)
    assert sorted(counts) == sorted(HOSTS)
    assert all(counts[h]["failed"] == 0 and counts[h]["unreachable"] == 0 for h in HOSTS), counts
    gets = file_gets(fleet.upstream_log)
    assert gets and set(gets.values()) == {1}, gets
    for name in HOSTS:
        store = fleet.hosts.hosts[name].home / "modelrig" / "store"
        stamps = [json.loads(p.read_text()) for p in store.rglob(".modelrig-stamp.json")]
        assert sorted(s["repo"] for s in stamps) == ["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"], name
        for stamp in stamps:
            repo = open_repo(fleet.upstream_dir, stamp["repo"])
            revisions = {r.commit: r for r in (resolve_revision(repo, n) for n in repo.revision_names())}
            # the commit the host records (and its lock will) is the upstream's, not something of the fleet hub's
            upstream = revisions[stamp["commit"]]
            assert {f["path"]: f["sha256"] for f in stamp["files"]} == \
                {f.path: f.sha256 for f in upstream.files if f.path in {e["path"] for e in stamp["files"]}}
            folder = next(p.parent for p in store.rglob(".modelrig-stamp.json")
                          if json.loads(p.read_text())["repo"] == stamp["repo"])
            for f in stamp["files"]:
                assert hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() == f["sha256"], (name, f)


def test_a_second_run_fetches_nothing_from_anyone(fleet: FleetRun) -> None:
    hub_log = fleet.hub_dir / "fleet-hub.log"
    before_up, before_hub = len(logged_requests(fleet.upstream_log)), len(logged_requests(hub_log))
    again = fleet.run()
    assert again.returncode == 0, again.stdout[-8000:] + again.stderr[-3000:]
    counts = recap(again.stdout)
    assert {h: counts[h]["changed"] for h in HOSTS} == dict.fromkeys(HOSTS, 0), again.stdout[-6000:]
    # no file from anyone; the manifest names branches, which the fleet hub asks the upstream about once each
    upstream_asked = logged_requests(fleet.upstream_log)[before_up:]
    assert [r for r in upstream_asked if "/resolve/" in r[1] or r[1].startswith("/_lfs/")] == []
    assert sorted(r[1] for r in upstream_asked) == sorted({r[1] for r in upstream_asked})
    assert {r[1].split("?")[0] for r in upstream_asked} <= {
        f"/api/models/{repo}/{what}" for repo in ("modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta")
        for what in ("revision/main", "refs")}
    hub_asked = logged_requests(hub_log)[before_hub:]
    assert [r for r in hub_asked if "/resolve/" in r[1] or r[1].startswith("/_lfs/")] == []


def test_the_fleet_hub_is_a_supervised_service_started_again_once_it_died(fleet: FleetRun) -> None:
    assert fleet.first.returncode == 0, fleet.first.stdout[-6000:]
    status = hub_status(fleet.hub_dir)
    systemd = Path("/run/systemd/system").is_dir()  # the controller runs it as root: a system unit there
    assert (status["running"], status["listening"], status["supervisor"]) == \
        (True, True, "systemd" if systemd else "process")
    pid = int(status["pid"])  # type: ignore[arg-type]
    assert os.getsid(pid) != os.getsid(0)  # not in the session of the play that started it
    # the tokens are two 0600 files beside it, never in the play's output
    tokens = (fleet.hub_dir / "tokens").read_text().split()
    assert tokens[1] == MS_TOKEN and (fleet.hub_dir / "upstream-modelscope-token").read_text() == MS_TOKEN + "\n"
    assert {oct((fleet.hub_dir / f).stat().st_mode & 0o777) for f in
            ("tokens", "upstream-token", "upstream-modelscope-token")} == {"0o600"}
    assert MS_TOKEN not in fleet.first.stdout + fleet.first.stderr
    assert tokens[0] not in fleet.first.stdout + fleet.first.stderr

    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    if systemd:  # Restart=on-failure brings it back by itself
        time.sleep(8)
        assert hub_status(fleet.hub_dir)["running"]
    else:  # a background process is started again by the next run
        assert hub_status(fleet.hub_dir)["running"] is False
    again = fleet.run("-v")
    assert again.returncode == 0, again.stdout[-6000:]
    counts = recap(again.stdout)
    # the hub's task runs once, for the play's first host
    assert {h: counts[h]["changed"] for h in HOSTS} == {"h1": 0 if systemd else 1, "h2": 0, "h3": 0, "h4": 0}
    assert MS_TOKEN not in again.stdout + again.stderr
    restarted = hub_status(fleet.hub_dir)
    assert restarted["running"] and restarted["listening"] and restarted["pid"] != pid
    third = fleet.run()
    assert {h: recap(third.stdout)[h]["changed"] for h in HOSTS} == dict.fromkeys(HOSTS, 0), third.stdout[-6000:]
    assert hub_status(fleet.hub_dir)["pid"] == restarted["pid"]


def test_one_host_failing_its_fetch_leaves_the_others_and_a_rerun_fixes_it(fleet: FleetRun) -> None:
    h4 = fleet.hosts.hosts["h4"]
    store = h4.home / "modelrig" / "store"
    before_up = len(logged_requests(fleet.upstream_log))
    shutil.rmtree(store / "huggingface")
    store.chmod(0o500)  # h4 can no longer write its downloads
    try:
        broken = fleet.run()
    finally:
        store.chmod(0o755)
    counts = recap(broken.stdout)
    assert broken.returncode != 0
    assert counts["h4"]["failed"] == 1, broken.stdout[-6000:]
    assert {h: (counts[h]["failed"], counts[h]["changed"]) for h in HOSTS if h != "h4"} == \
        dict.fromkeys(("h1", "h2", "h3"), (0, 0))
    again = fleet.run()
    assert again.returncode == 0, again.stdout[-6000:]
    counts = recap(again.stdout)
    assert counts["h4"]["changed"] > 0 and counts["h4"]["failed"] == 0
    assert {h: counts[h]["changed"] for h in ("h1", "h2", "h3")} == dict.fromkeys(("h1", "h2", "h3"), 0)
    assert sorted(json.loads(p.read_text())["repo"] for p in store.rglob(".modelrig-stamp.json")) == \
        ["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"]
    # h4's files came again from the fleet hub, which kept them: the upstream sent none
    assert [r for r in logged_requests(fleet.upstream_log)[before_up:]
            if "/resolve/" in r[1] or r[1].startswith("/_lfs/")] == []


def test_a_host_that_cannot_reach_the_fleet_hub_warns_and_downloads_upstream_or_fails_by_the_variable(
        fleet: FleetRun) -> None:
    """h2 is given a hub address where nothing listens: with the fallback (the default) it warns naming itself and
    the hub, and downloads from its own endpoint (the reference hub); with modelrig_fleet_hub_fallback: false it
    fails in one line and the others finish."""
    data = yaml.safe_load(fleet.inventory.read_text())
    closed = free_port("127.0.0.1")
    data["all"]["hosts"]["h2"]["modelrig_fleet_hub_port"] = closed
    cut = fleet.tmp / "hosts-h2-cut.yml"
    cut.write_text(yaml.safe_dump(data, sort_keys=False))
    hub = f"http://127.0.0.1:{closed}"
    store = fleet.hosts.hosts["h2"].home / "modelrig" / "store"
    wheel = built_wheel()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        shutil.rmtree(store / "huggingface", ignore_errors=True)
        return playbook(fleet.tmp, cut, "site.yml", "--tags", TAGS, *NO_RESTART, "-e", f"modelrig_wheel={wheel}",
                        *args)

    before = len(logged_requests(fleet.upstream_log))
    warned = run()
    assert warned.returncode == 0, warned.stdout[-6000:]
    warnings = [line for line in warned.stdout.splitlines() if "warning: the fleet hub" in line]
    assert len(warnings) == 1 and f"warning: the fleet hub {hub} does not answer from h2" in warnings[0], warnings
    counts = recap(warned.stdout)
    assert counts["h2"]["changed"] > 0 and {h: counts[h]["changed"] for h in ("h1", "h3", "h4")} == \
        dict.fromkeys(("h1", "h3", "h4"), 0)
    # h2's files came from the reference hub itself, each once, every weight file among them
    direct = file_gets_of(logged_requests(fleet.upstream_log)[before:])
    weights = {path for path in file_gets(fleet.upstream_log) - direct if path.startswith("/_lfs/")}
    assert direct and set(direct.values()) == {1} and weights and weights <= set(direct), direct
    assert sorted(json.loads(p.read_text())["repo"] for p in store.rglob(".modelrig-stamp.json")) == \
        ["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"]

    before = len(logged_requests(fleet.upstream_log))
    refused = run("-e", "modelrig_fleet_hub_fallback=false")
    assert refused.returncode != 0
    counts = recap(refused.stdout)
    assert counts["h2"]["failed"] == 1, refused.stdout[-6000:]
    assert {h: (counts[h]["failed"], counts[h]["changed"]) for h in ("h1", "h3", "h4")} == \
        dict.fromkeys(("h1", "h3", "h4"), (0, 0))
    fatal = [line for line in refused.stdout.splitlines() if line.startswith("fatal: [h2]")]
    assert len(fatal) == 1 and f"the fleet hub {hub} does not answer from h2" in fatal[0], fatal
    assert "modelrig_fleet_hub_fallback: true" in fatal[0]
    assert file_gets_of(logged_requests(fleet.upstream_log)[before:]) == Counter()  # h2 downloaded nothing
    assert list(store.rglob(".modelrig-stamp.json")) == []


def test_down_stops_the_fleet_hub_and_leaves_nothing_of_its_service(fleet: FleetRun) -> None:
    pid = int(hub_status(fleet.hub_dir)["pid"])  # type: ignore[arg-type]
    blobs = sorted(p.name for p in (fleet.hub_dir / ".modelrig-pull" / "blobs").rglob("*") if p.is_file())
    down = playbook(fleet.tmp, fleet.inventory, "down.yml")
    assert down.returncode == 0, down.stdout[-6000:]
    assert gone(pid)
    assert hub_status(fleet.hub_dir) == {"running": False, "pid": None, "supervisor": None, "url": None}
    assert not (fleet.hub_dir / ".modelrig-service").exists() and not (fleet.hub_dir / "fleet-hub.pid").exists()
    assert not Path("/etc/systemd/system/modelrig-fleet-hub.service").exists()
    # what it fetched stays for the next site.yml
    assert sorted(p.name for p in (fleet.hub_dir / ".modelrig-pull" / "blobs").rglob("*") if p.is_file()) == blobs
    again = playbook(fleet.tmp, fleet.inventory, "down.yml")
    assert {h: c["changed"] for h, c in recap(again.stdout).items()} == dict.fromkeys(HOSTS, 0), again.stdout[-4000:]


def test_a_fleet_hub_on_an_inventory_host_serves_the_fleet_and_itself(tmp_path: Path) -> None:
    reason = available()
    if reason:
        pytest.fail(reason)
    upstream_dir = tmp_path / "upstream"
    subprocess.run([sys.executable, "-m", "modelrig", "hub", "make-tiny", str(upstream_dir), "--only",
                    "modelrig-tiny/llama-meta", "--only", "modelrig-tiny/ziya-delta"], check=True, capture_output=True)
    tokens = upstream_dir / ".modelrig-hub-tokens"
    log = tmp_path / "upstream.log"
    with served(upstream_dir, "--token-file", str(tokens), access_log=log) as url, \
            SshHosts(tmp_path / "ssh-hosts") as hosts:
        for name in ("hub", "worker"):
            hosts.add(name)
        hub = hosts.hosts["hub"]
        inventory = hosts.inventory(tmp_path / "hosts.yml", hostvars={
            name: {**demo_knobs(tmp_path, hosts.hosts[name], url, f"manifests-{name}"),
                   "modelrig_hf_token": tokens.read_text().split()[0]} for name in ("hub", "worker")}, group_vars={
            "modelrig_fleet_hub": "hub", "modelrig_fleet_hub_port": free_port(hub.address)})
        run = playbook(tmp_path, inventory, "site.yml", "--tags", TAGS, *NO_RESTART)
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
        assert "warning: the fleet hub" not in run.stdout
        gets = file_gets(log)
        assert gets and set(gets.values()) == {1}, gets
        kept = hub.home / "modelrig" / "fleet-hub" / ".modelrig-pull" / "blobs"
        assert len([p for p in kept.rglob("*") if p.is_file()]) == sum(gets.values())
        for name in ("hub", "worker"):
            stamps = list((hosts.hosts[name].home / "modelrig" / "store").rglob(".modelrig-stamp.json"))
            assert len(stamps) == 2, name
