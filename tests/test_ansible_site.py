"""playbooks/site.yml over SSH to real test hosts: the demo model provisioned from a local hub, healthy and
answering a chat request; a second run changes nothing; a token from Vault stays out of output, command lines and
every file but its own; down.yml stops the demos."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from tests.helpers.ansible_site import MODEL, built_wheel, write_inventory
from tests.helpers.sshhosts import SshHost, SshHosts, available, playbook, recap
from tests.helpers.venvs import pip_find_links

pytestmark = pytest.mark.slow
@dataclass
class Site:
    """One provisioned test host and what is needed to drive it again."""

    hosts: SshHosts
    host: SshHost
    inventory: Path
    tmp: Path
    token: str
    first: subprocess.CompletedProcess[str]

    def run(self, book: str = "site.yml", *args: str) -> subprocess.CompletedProcess[str]:
        """Run a playbook again with the wheel the first run built (the working tree may change meanwhile)."""
        wheel = built_wheel()
        return playbook(self.tmp, self.inventory, book, "--vault-password-file", str(self.tmp / "vault-pass"),
                        "-e", f"modelrig_wheel={wheel}", *args)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_hub: tuple[str, str]) -> Iterator[Site]:
    """One unprivileged host provisioned by site.yml (the first run)."""
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("site")
    url, token = tiny_hub
    with SshHosts(tmp / "ssh-hosts") as hosts:
        host = hosts.add("tiny")
        inventory = write_inventory(hosts, tmp, host, url, token)
        first = playbook(tmp, inventory, "site.yml", "--vault-password-file", str(tmp / "vault-pass"))
        yield Site(hosts=hosts, host=host, inventory=inventory, tmp=tmp, token=token, first=first)


def test_site_provisions_the_demo_model_which_answers_a_chat_request(site):
    assert site.first.returncode == 0, site.first.stdout[-6000:] + site.first.stderr[-3000:]
    counts = recap(site.first.stdout)["tiny"]
    assert counts["failed"] == 0 and counts["changed"] > 5
    assert f"{MODEL}/api  http://{site.host.address}:" in site.first.stdout
    assert "health: ok, 2/2 demos healthy" in site.first.stdout
    config = yaml.safe_load((site.host.home / "modelrig" / "config.yaml").read_text())
    assert config["hub"]["token_file"] == f"{site.host.home}/modelrig/secrets/hf_token"
    assert config["pip"]["find_links"] == pip_find_links() and config["serve"]["bind"] == site.host.address
    api = next(line.split()[1] for line in site.first.stdout.splitlines() if f"{MODEL}/api  http" in line)
    client = OpenAI(base_url=api.rstrip('",'), api_key="unused-on-loopback", timeout=120)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=8)
    assert answer.choices[0].message.content.strip()


def test_second_run_changes_nothing_and_keeps_the_vault_token_secret(site):
    before_pids = _pids(site)
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_command_lines, args=(site.token, seen, stop), daemon=True)
    watcher.start()
    try:
        again = site.run("site.yml", "-vvv")
    finally:
        stop.set()
        watcher.join()
    assert seen == [], f"the token appeared on command lines: {seen}"
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    counts = recap(again.stdout)["tiny"]
    assert counts["changed"] == 0 and counts["failed"] == 0, again.stdout[-6000:]
    assert "health: ok, 2/2 demos healthy" in again.stdout
    assert _pids(site) == before_pids  # nothing restarted
    # one engine run (model_state) found every stage in place: no stage asked the engine again
    assert _status(again.stdout, "model_state : Ask which stages of each model are already in place.") == "ok"
    for task in ("rust_toolchain : Ask the planner whether a model builds tokenizers from source.",
                 "model_env : Find the environments that would change.",
                 "model_weights : Find the models whose weights would change.",
                 "model_weights : Convert each model's weights.", "model_launch : Render and start each model's demos.",
                 "model_launch : Ask each model's demos for their health.",
                 "model_lock : Lock each model on the host (the file is rewritten only when the lock changed)."):
        assert _status(again.stdout, task) == "skipping", task
    assert _status(again.stdout, "model_lock : Copy each lock back to the controller.") == "ok"

    for output in (site.first.stdout, site.first.stderr, again.stdout, again.stderr):
        assert site.token not in output
    holders = [p for p in site.host.home.rglob("*") if p.is_file() and not p.is_symlink() and _holds(p, site.token)]
    token_file = site.host.home / "modelrig" / "secrets" / "hf_token"
    assert holders == [token_file]
    assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.stat().st_uid == site.host.uid
    for pid in _pids_of(site.host.uid):
        assert site.token.encode() not in _read(Path(f"/proc/{pid}/cmdline"))
        assert site.token.encode() not in _read(Path(f"/proc/{pid}/environ"))
    assert _pids_of(site.host.uid), "the demos should be running as the host's user"


def _status(out: str, task: str) -> str:
    """How the task ran on the host: the first status line after its TASK header (ok, changed, skipping)."""
    after = out[out.index(f"TASK [{task}]"):]
    return re.search(r"^(ok|changed|skipping|failed|fatal): \[", after, re.M).group(1)


COPY_WHEEL = "modelrig : Copy the wheel to the host when it lacks this one."
INSTALL = "modelrig : Install the toolkit env when it is missing or its requirements changed."


def test_a_removed_wheel_and_an_edited_config_are_put_back_and_the_toolkit_is_not_reinstalled(site):
    root = site.host.home / "modelrig"
    wheel = built_wheel()
    (root / "wheels" / wheel.name).unlink()
    config = root / "config.yaml"
    text = config.read_text()
    config.write_text(text + "# edited on the host\n")
    run = site.run("site.yml", "--tags", "toolkit", "--diff")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert recap(run.stdout)["tiny"]["changed"] == 2, run.stdout[-6000:]  # the host's files, the wheel
    assert f"+++ after: {config} (mode 0644)\n@@ " in run.stdout and "-# edited on the host\n" in run.stdout
    assert (_status(run.stdout, COPY_WHEEL), _status(run.stdout, INSTALL)) == ("changed", "skipping")
    assert (root / "wheels" / wheel.name).read_bytes() == wheel.read_bytes() and config.read_text() == text
    assert site.token not in run.stdout
    again = site.run("site.yml", "--tags", "toolkit")
    assert recap(again.stdout)["tiny"]["changed"] == 0, again.stdout[-6000:]
    assert (_status(again.stdout, COPY_WHEEL), _status(again.stdout, INSTALL)) == ("skipping", "skipping")


def _pids(site: Site) -> dict[str, int]:
    status = site.hosts.ssh("tiny", f"{site.host.home}/modelrig/toolkit/bin/modelrig --data-root "
                                    f"{site.host.home}/modelrig status {MODEL} --json")
    return {e["entry"]: e["pid"] for e in yaml.safe_load(status.stdout)["entries"]}


def test_only_the_entry_whose_script_changed_is_restarted(site):
    before = _pids(site)
    manifest = site.tmp / "manifests" / f"{MODEL}.yaml"
    data = yaml.safe_load(manifest.read_text())
    chat_entry = next(e for e in data["launch"] if e["name"] == "chat")
    chat_entry["options"]["max_new_tokens"] = 12
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    run = site.run()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "health: ok, 2/2 demos healthy" in run.stdout
    after = _pids(site)
    assert after["api"] == before["api"] and after["chat"] != before["chat"]
    assert all(after.values())


def _starts(site: Site) -> dict[str, int]:
    """How often each entry's supervised process was started (the markers of its log)."""
    run = site.host.home / "modelrig" / "run" / MODEL
    return {log.stem: log.read_text().count("--- modelrig start") for log in run.glob("*.log")}


def test_a_changed_pin_builds_a_new_env_beside_the_old_and_restarts_once(site):
    envs = site.host.home / "modelrig" / "envs"
    old_envs = {p.name for p in envs.iterdir() if p.is_dir()}
    before, starts = _pids(site), _starts(site)
    manifest = site.tmp / "manifests" / f"{MODEL}.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["env"]["packages"] = [p for p in data["env"]["packages"] if not p.startswith("protobuf")] + ["protobuf<6"]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    run = site.run()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "health: ok, 2/2 demos healthy" in run.stdout
    new_envs = {p.name for p in envs.iterdir() if p.is_dir()}
    assert old_envs < new_envs and len(new_envs - old_envs) == 1  # built beside the old one, which stays
    after = _pids(site)
    assert all(after[e] != before[e] for e in before)
    assert _starts(site) == {entry: count + 1 for entry, count in starts.items()}  # restarted exactly once
    command = Path(f"/proc/{after['api']}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert command.startswith(str(envs / (new_envs - old_envs).pop()))  # the service now runs in the new env
    again = site.run()
    assert recap(again.stdout)["tiny"]["changed"] == 0 and _pids(site) == after


def test_down_stops_the_demos(site):
    down = site.run("down.yml")
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
    assert recap(down.stdout)["tiny"]["changed"] == 1
    status = site.hosts.ssh("tiny", f"{site.host.home}/modelrig/toolkit/bin/modelrig --data-root "
                                    f"{site.host.home}/modelrig status {MODEL} --json")
    entries = yaml.safe_load(status.stdout)["entries"]
    assert len(entries) == 2 and not any(e["running"] for e in entries)


def _watch_command_lines(secret: str, seen: list[str], stop: threading.Event) -> None:
    """Scan every process's command line every few milliseconds until `stop`; record any holding `secret`."""
    needle = secret.encode()
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and needle in _read(proc / "cmdline"):
                seen.append(_read(proc / "cmdline").replace(b"\0", b" ").decode(errors="replace"))
        stop.wait(0.02)


def _holds(path: Path, secret: str) -> bool:
    try:
        with path.open("rb") as handle:
            return secret.encode() in handle.read(50_000_000)
    except OSError:
        return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _pids_of(uid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) == uid]


def _uid(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


