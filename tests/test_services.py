"""Start scripts and services: the supervised background process, systemd units, launchd plists, the CLI verbs."""

from __future__ import annotations

import json
import os
import plistlib
import pwd
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from modelrig.errors import HealthCheckError, LaunchError, PortBusyError
from modelrig.launch import check, choose_supervisor, start, status, stop, wait_healthy
from modelrig.launch.health import ensure_port_free
from tests.helpers.launching import free_port, render_one, tiny_manifest

DEMO = textwrap.dedent('''
    import http.server, json, sys
    VERSION = "{version}"
    args = sys.argv[1:]
    host, port = args[args.index("--server-name") + 1], int(args[args.index("--server-port") + 1])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"version": VERSION, "argv": args}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer((host, port), Handler).serve_forever()
''')


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def upstream_repo(tmp_path) -> tuple[Path, str]:
    """A local mirror of an upstream demo repo with two commits; returns (repo, the first, pinned, commit)."""
    repo = tmp_path / "mirror"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "web_demo.py").write_text(DEMO.format(version="pinned"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "pinned")
    pinned = _git(repo, "rev-parse", "HEAD")
    (repo / "web_demo.py").write_text(DEMO.format(version="newer"))
    _git(repo, "commit", "-qam", "newer")
    return repo, pinned


def _entry(tmp_path: Path, pinned: str, *, script: str = "web_demo.py", port: int | None = None) -> Path:
    manifest = tiny_manifest("tiny-upstream", [{
        "name": "web", "kind": "upstream_script", "port": port or free_port(),
        "options": {"start_timeout_s": 30},
        "upstream": {"repo": "Example/demo", "ref": pinned, "script": script,
                     "args": ["-c", "{weights}", "--server-name", "{bind}", "--server-port", "{port}"]}}])
    return render_one(manifest, tmp_path / "launch", python=Path(sys.executable), paths={"model": tmp_path / "w"},
                      entry="web")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_process_supervisor_starts_the_pinned_upstream_demo_and_waits_for_health(tmp_path, upstream_repo,
                                                                                   monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    entry = _entry(tmp_path, pinned)
    result = start(entry, supervisor="process", run_dir=tmp_path / "run")
    try:
        assert result.changed and result.details["supervisor"] == "process"
        info = json.loads((entry / "entry.json").read_text())
        answer = _get(f"http://127.0.0.1:{info['port']}/")
        assert answer["version"] == "pinned"
        assert answer["argv"] == ["-c", str(tmp_path / "w"), "--server-name", "127.0.0.1", "--server-port",
                                  str(info["port"]), "--cpu-only"]
        assert _git(entry / "upstream", "rev-parse", "HEAD") == pinned
        pidfile = tmp_path / "run" / "web.pid"
        assert json.loads(pidfile.read_text())["pid"] == result.details["pid"]
        again = start(entry, supervisor="process", run_dir=tmp_path / "run")
        assert not again.changed and again.details["pid"] == result.details["pid"]
        assert status(entry, supervisor="process", run_dir=tmp_path / "run")["healthy"] is True
    finally:
        stopped = stop(entry, supervisor="process", run_dir=tmp_path / "run")
    assert stopped.changed
    assert not (tmp_path / "run" / "web.pid").exists()
    assert status(entry, supervisor="process", run_dir=tmp_path / "run")["running"] is False
    assert not stop(entry, supervisor="process", run_dir=tmp_path / "run").changed


def test_stale_pidfile_is_detected_and_replaced(tmp_path, upstream_repo, monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    entry = _entry(tmp_path, pinned)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "web.pid").write_text(json.dumps({"pid": dead.pid, "start_time": "1"}))
    assert status(entry, supervisor="process", run_dir=tmp_path / "run")["stale_pidfile"] is True
    result = start(entry, supervisor="process", run_dir=tmp_path / "run")
    try:
        assert result.changed and result.details["stale_pidfile_removed"] is True
        assert result.details["pid"] != dead.pid
    finally:
        stop(entry, supervisor="process", run_dir=tmp_path / "run")


def test_a_demo_that_dies_fails_the_start_with_its_log(tmp_path, upstream_repo, monkeypatch):
    repo, _ = upstream_repo
    (repo / "broken.py").write_text("import sys\nprint('cannot load the model: out of memory')\nsys.exit(3)\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "broken")
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    entry = _entry(tmp_path, _git(repo, "rev-parse", "HEAD"), script="broken.py")
    with pytest.raises(LaunchError, match=r"exited \(status 3\)[\s\S]*out of memory"):
        start(entry, supervisor="process", run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "web.pid").exists()


@pytest.mark.slow
def test_health_wait_gives_up_after_the_timeout(tmp_path, upstream_repo, monkeypatch):
    repo, _ = upstream_repo
    (repo / "silent.py").write_text("import time\ntime.sleep(60)\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "silent")
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    entry = _entry(tmp_path, _git(repo, "rev-parse", "HEAD"), script="silent.py")
    with pytest.raises(LaunchError, match="did not answer"):
        start(entry, supervisor="process", run_dir=tmp_path / "run", timeout=2)
    assert status(entry, supervisor="process", run_dir=tmp_path / "run")["running"] is False


def test_systemd_unit_restarts_on_failure_and_passes_systemd_analyze(tmp_path, upstream_repo):
    _, pinned = upstream_repo
    entry = _entry(tmp_path, pinned)
    unit = entry / "modelrig-tiny-upstream-web.service"
    text = unit.read_text()
    assert "Restart=on-failure" in text
    assert f"ExecStart=/bin/sh {entry}/start.sh" in text
    assert f"WorkingDirectory={entry}" in text
    assert "MODELRIG_API_KEY" not in text and "Environment=" not in text
    for section in ("[Unit]", "[Service]", "[Install]"):
        assert section in text
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian's systemd package) is needed: scripts/system-deps.sh"
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if str(unit.name) in line or "Unknown" in line]
    assert not problems, done.stderr


def test_launchd_plist_round_trips_and_keeps_failed_jobs_alive(tmp_path, upstream_repo):
    _, pinned = upstream_repo
    entry = _entry(tmp_path, pinned)
    plist = plistlib.loads((entry / "ai.modelrig.tiny-upstream.web.plist").read_bytes())
    assert plist["Label"] == "ai.modelrig.tiny-upstream.web"
    assert plist["ProgramArguments"] == ["/bin/sh", f"{entry}/start.sh"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert plist["StandardOutPath"].endswith("web.log")
    # A LaunchDaemon of the system domain by default, run as the user who rendered it (not as root).
    assert plist["UserName"] == pwd.getpwuid(os.getuid()).pw_name
    assert json.loads((entry / "entry.json").read_text())["launchd_domain"] == "system"


def test_cli_render_launch_status_stop(cli, tmp_path, upstream_repo, monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    port = free_port()
    (manifests / "tiny-cli.yaml").write_text(textwrap.dedent(f"""
        id: tiny-cli
        title: A tiny upstream demo
        license: {{name: test}}
        weights:
          model: {{local: {{var: tiny_cli_dir}}}}
        env: {{python: "3.11"}}
        resources: {{params_b: 0.001, memory_gb: {{fp32: 0.1}}}}
        launch:
          - name: web
            kind: upstream_script
            port: {port}
            upstream: {{repo: Example/demo, ref: {pinned}, script: web_demo.py,
                        args: ["--server-name", "{{bind}}", "--server-port", "{{port}}"]}}
    """))
    monkeypatch.setenv("MODELRIG_MANIFESTS", str(manifests))
    code, out, err = cli("render", "tiny-cli", "--python", sys.executable, "--weights", f"model={tmp_path}")
    assert code == 0, err
    try:
        code, out, err = cli("launch", "tiny-cli", "--supervisor", "process", "--json")
        assert code == 0, err
        launched = json.loads(out)
        assert launched["changed"] and launched["details"]["results"][0]["details"]["url"] == f"http://127.0.0.1:{port}/"
        code, out, _ = cli("status", "--supervisor", "process", "--json")
        rows = json.loads(out)["entries"]
        assert [(r["model"], r["entry"], r["healthy"]) for r in rows] == [("tiny-cli", "web", True)]
    finally:
        code, out, err = cli("stop", "tiny-cli", "--supervisor", "process", "--json")
    assert code == 0 and json.loads(out)["changed"] is True
    code, _, err = cli("launch", "nothing-rendered", "--supervisor", "process")
    assert code == 8 and "modelrig render nothing-rendered" in err


def _sleeper() -> subprocess.Popen:
    """An unrelated live process (not started by modelrig)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


@pytest.mark.slow
@pytest.mark.parametrize("record", [{"start_time": None}, {}, {"create_time": 1.0}, {"start_time": "1"}])
def test_stop_never_signals_a_process_it_cannot_confirm_it_started(tmp_path, upstream_repo, record):
    _, pinned = upstream_repo
    entry = _entry(tmp_path, pinned)
    victim = _sleeper()
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "web.pid").write_text(json.dumps({"pid": victim.pid, **record}))
        assert status(entry, supervisor="process", run_dir=tmp_path / "run")["running"] is False
        result = stop(entry, supervisor="process", run_dir=tmp_path / "run", grace=1)
        assert not result.changed and result.details["stale_pidfile_removed"] is True
        time.sleep(0.3)
        assert victim.poll() is None, "an unrelated process was signalled"
    finally:
        victim.kill()
        victim.wait()


def test_a_busy_port_is_refused_before_starting_with_its_code(tmp_path, upstream_repo, monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        entry = _entry(tmp_path, pinned, port=port)
        with pytest.raises(PortBusyError) as raised:
            start(entry, supervisor="process", run_dir=tmp_path / "run", timeout=10)
        assert raised.value.code == "port_busy" and raised.value.fields["port"] == port
        assert other.pid in raised.value.fields["pids"]
        assert f"port {port} is already in use by pid {other.pid}" in str(raised.value)
        assert not (tmp_path / "run" / "web.pid").exists()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_down_stops_entries_started_without_up_as_the_ansible_roles_start_them(tmp_path, upstream_repo,
                                                                               monkeypatch):
    # The roles launch each rendered entry (no up.json): `modelrig down` still stops them.
    from modelrig.cli import main

    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    root = tmp_path / "root"
    manifest = tiny_manifest("tiny-upstream", [{
        "name": "web", "kind": "upstream_script", "port": free_port(), "options": {"start_timeout_s": 30},
        "upstream": {"repo": "Example/demo", "ref": pinned, "script": "web_demo.py",
                     "args": ["-c", "{weights}", "--server-name", "{bind}", "--server-port", "{port}"]}}])
    entry = render_one(manifest, root / "launch" / "tiny-upstream", python=Path(sys.executable),
                       paths={"model": tmp_path / "w"}, entry="web")
    (root / "config.yaml").write_text("serve: {supervisor: process}\n")
    started = start(entry, supervisor="process", run_dir=root / "run" / "tiny-upstream")
    try:
        assert main(["--data-root", str(root), "down", "tiny-upstream"]) == 0
        assert not psutil.pid_exists(started.details["pid"]) or \
            psutil.Process(started.details["pid"]).status() == psutil.STATUS_ZOMBIE
        assert status(entry, supervisor="process", run_dir=root / "run" / "tiny-upstream")["running"] is False
    finally:
        stop(entry, supervisor="process", run_dir=root / "run" / "tiny-upstream")


def test_a_port_held_by_another_modelrig_demo_names_it_and_the_command_that_stops_it(tmp_path):
    # The other demo: a rendered entry of another data root, its server running in the entry's folder (as every
    # supervisor starts start.sh there).
    port = free_port()
    other_root = tmp_path / "other-root"
    folder = other_root / "launch" / "demo-tiny-ziya" / "api"
    folder.mkdir(parents=True)
    (folder / "entry.json").write_text(json.dumps({"model": "demo-tiny-ziya", "entry": "api", "port": port}))
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=folder,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        with pytest.raises(PortBusyError) as raised:
            ensure_port_free({"model": "mine", "entry": "api", "port": port, "bind": "127.0.0.1"})
        assert (f"port {port} is already in use by pid {other.pid}, the modelrig demo demo-tiny-ziya/api rendered "
                f"in {folder} (stop it: modelrig --data-root {other_root} stop demo-tiny-ziya api)"
                ) in str(raised.value)
    finally:
        other.kill()
        other.wait()


def test_a_health_answer_from_another_process_is_not_healthy(tmp_path):
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours = _sleeper()
    try:
        _wait_listening(port)
        info = {"model": "m", "entry": "e", "port": port,
                "health": {"type": "http", "url": f"http://127.0.0.1:{port}/", "timeout_s": 5}}
        with pytest.raises(HealthCheckError, match=f"not from the process modelrig started \\(pid {ours.pid}\\)"):
            wait_healthy(info, pid=ours.pid, exited=ours.poll)
        assert wait_healthy(info, pid=other.pid, exited=other.poll) >= 0
    finally:
        for proc in (other, ours):
            proc.kill()
            proc.wait()


def test_services_never_get_hub_tokens_in_their_environment(tmp_path, upstream_repo, monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_canary")
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms_secret_canary")
    entry = _entry(tmp_path, pinned)
    result = start(entry, supervisor="process", run_dir=tmp_path / "run")
    try:
        root = psutil.Process(result.details["pid"])
        family = [root, *root.children(recursive=True)]
        assert any("python" in proc.name() for proc in family)  # the demo itself, not only start.sh
        for proc in family:
            environ = proc.environ()
            assert "HF_TOKEN" not in environ and "MODELSCOPE_API_TOKEN" not in environ
            assert "secret_canary" not in " ".join(environ.values())
    finally:
        stop(entry, supervisor="process", run_dir=tmp_path / "run")


def test_check_answers_from_the_running_service_and_touches_nothing(tmp_path, upstream_repo, monkeypatch):
    repo, pinned = upstream_repo
    monkeypatch.setenv("MODELRIG_UPSTREAM_MIRROR", str(repo))
    entry = _entry(tmp_path, pinned)
    run_dir = tmp_path / "run"
    before = check(entry, supervisor="process", run_dir=run_dir)
    assert before.check and before.changed and before.reasons == ["web: service is stopped"]
    assert not run_dir.exists()
    start(entry, supervisor="process", run_dir=run_dir)
    try:
        snapshot = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
        now = check(entry, supervisor="process", run_dir=run_dir)
        assert not now.changed and now.reasons == []
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == snapshot
        stamp = json.loads((entry / ".modelrig-stamp.json").read_text())
        stamp["key"] = "0" * 16
        (entry / ".modelrig-stamp.json").write_text(json.dumps(stamp))
        assert check(entry, supervisor="process", run_dir=run_dir).reasons == [
            "web: launch files were re-rendered since the service started (restart)"]
    finally:
        stop(entry, supervisor="process", run_dir=run_dir)


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_the_kind_registry_covers_exactly_the_kinds_the_schema_accepts():
    from typing import get_args

    from modelrig.launch.kinds import KINDS
    from modelrig.manifest import ADAPTER_KINDS, CUDA_ONLY_KINDS, LaunchKind
    from modelrig.shipped import launch_dir

    assert set(KINDS) == set(get_args(LaunchKind))
    assert {k.name for k in KINDS.values() if k.cuda_only} == CUDA_ONLY_KINDS
    assert ADAPTER_KINDS <= set(KINDS)
    for kind in KINDS.values():
        assert (launch_dir() / kind.template).is_file(), kind.template
        assert (kind.default_port is None) == (kind.health_path is None) or kind.name == "batch_caption"
        assert not (kind.loopback_only and kind.auth_var), kind.name


@pytest.mark.parametrize(("darwin", "systemd_init", "root", "user_manager", "expected"), [
    (False, True, True, False, "systemd"),    # a root login: system units
    (False, True, False, True, "systemd"),    # a login user with its user manager (session or lingering)
    (False, True, False, False, "process"),   # systemd is init but this user has no manager to talk to
    (False, False, True, False, "process"),   # a container without an init system (AutoDL)
    (False, False, False, True, "process"),
    (True, False, False, False, "launchd"),
])
def test_supervisor_choice_gives_a_non_root_user_with_a_user_manager_systemd(darwin, systemd_init, root,
                                                                             user_manager, expected):
    assert choose_supervisor(darwin=darwin, systemd_init=systemd_init, root=root,
                             user_manager=user_manager) == expected
