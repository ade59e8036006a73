"""Starting, stopping and checking rendered launch entries: systemd, launchd, or a supervised background process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from modelrig.errors import LaunchError
from modelrig.render import ENTRY_FILE
from modelrig.result import StageResult
from modelrig.stamp import atomic_write_text, read_stamp

Supervisor = Literal["auto", "process", "systemd", "launchd"]

#: Children started by this Python process, so their exit is reaped and noticed (no zombies counted as alive).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def read_entry(entry_dir: Path) -> dict[str, Any]:
    """The `entry.json` that `render` wrote for an entry; LaunchError when the folder was never rendered."""
    path = Path(entry_dir) / ENTRY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"{entry_dir}: not a rendered launch entry (no {ENTRY_FILE}); run `modelrig render` "
                          "first") from None
    except ValueError as exc:
        raise LaunchError(f"{path}: unreadable ({exc}); re-run `modelrig render`") from None


def detect_supervisor() -> str:
    """systemd where it runs as init, launchd on macOS, otherwise a supervised background process."""
    if sys.platform == "darwin" and shutil.which("launchctl"):
        return "launchd"
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        return "systemd"
    return "process"


def probe(info: dict[str, Any]) -> bool:
    """One health check: an HTTP GET of the entry's health URL answering 2xx."""
    health = info.get("health") or {}
    if health.get("type") != "http":
        return True
    try:
        with urllib.request.urlopen(health["url"], timeout=3) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(entry_dir: Path, *, timeout: float | None = None, pid: int | None = None,
                 log: Path | None = None) -> float:
    """Wait until the entry answers its health check; return the seconds waited.

    Raises `LaunchError` on timeout or, when `pid` is given, as soon as that process exits (with the log's tail).
    Entries without a health endpoint (batch jobs) count as healthy while their process runs.
    """
    info = read_entry(entry_dir)
    health = info.get("health") or {}
    limit = timeout if timeout is not None else float(health.get("timeout_s", 900))
    started = time.monotonic()
    if health.get("type") != "http":
        # a job (batch captioning): started when its process survives its first second, or finished cleanly
        while pid is not None and time.monotonic() - started < 1.0:
            if not _alive(pid):
                code = _CHILDREN[pid].returncode if pid in _CHILDREN else None
                if code not in (0, None):
                    raise LaunchError(f"{info['model']}/{info['entry']} exited with status {code}{_tail(log)}")
                break
            time.sleep(0.1)
        return time.monotonic() - started
    while True:
        if pid is not None and not _alive(pid):
            code = _CHILDREN[pid].returncode if pid in _CHILDREN else None
            raise LaunchError(f"{info['model']}/{info['entry']} exited (status {code}) before it became healthy"
                              f"{_tail(log)}")
        if probe(info):
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise LaunchError(f"{info['model']}/{info['entry']} did not answer {health.get('url')} within "
                              f"{limit:.0f}s{_tail(log)}")
        time.sleep(0.25)


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(text)


# ---------------------------------------------------------------------------------------------------------
# The supervised background process (containers without an init system, e.g. AutoDL).


def _run_files(entry_dir: Path, info: dict[str, Any], run_dir: Path | None) -> tuple[Path, Path]:
    folder = Path(run_dir) if run_dir is not None else Path(entry_dir) / "run"
    return folder / f"{info['entry']}.pid", folder / f"{info['entry']}.log"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _read_pidfile(pidfile: Path) -> dict[str, Any] | None:
    try:
        return json.loads(pidfile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _running_record(pidfile: Path) -> tuple[dict[str, Any] | None, bool]:
    """(the pidfile's record if its process still runs, whether a stale pidfile was found)."""
    record = _read_pidfile(pidfile)
    if record is None:
        return None, pidfile.exists()
    pid = int(record.get("pid", 0))
    if pid > 0 and _alive(pid) and (record.get("start_time") is None or record["start_time"] == _start_time(pid)):
        return record, False
    return None, True


def _rendered_key(entry_dir: Path) -> str | None:
    stamp = read_stamp(entry_dir)
    return stamp.get("key") if stamp else None


def _start_process(entry_dir: Path, info: dict[str, Any], *, run_dir: Path | None, timeout: float | None,
                   wait: bool, env: dict[str, str] | None, args: list[str]) -> tuple[bool, dict[str, Any]]:
    pidfile, log = _run_files(entry_dir, info, run_dir)
    record, stale = _running_record(pidfile)
    key = _rendered_key(entry_dir)
    details: dict[str, Any] = {"pidfile": str(pidfile), "log": str(log), "stale_pidfile_removed": stale}
    if record is not None:
        if record.get("key") == key:
            details["pid"] = record["pid"]
            if wait:
                details["waited_s"] = round(wait_healthy(entry_dir, timeout=timeout, pid=record["pid"], log=log), 3)
            return False, details
        _stop_process(entry_dir, info, run_dir=run_dir)  # re-rendered since it started: restart it
        details["restarted"] = True
    if stale:
        pidfile.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"--- modelrig start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(["/bin/sh", str(Path(entry_dir) / "start.sh"), *args], cwd=entry_dir,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    _CHILDREN[proc.pid] = proc
    atomic_write_text(pidfile, json.dumps({"pid": proc.pid, "start_time": _start_time(proc.pid), "key": key,
                                           "entry_dir": str(entry_dir), "started": time.time()}) + "\n")
    details["pid"] = proc.pid
    if wait:
        try:
            details["waited_s"] = round(wait_healthy(entry_dir, timeout=timeout, pid=proc.pid, log=log), 3)
        except LaunchError:
            _stop_process(entry_dir, info, run_dir=run_dir)
            raise
    return True, details


def _stop_process(entry_dir: Path, info: dict[str, Any], *, run_dir: Path | None,
                  grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
    pidfile, _ = _run_files(entry_dir, info, run_dir)
    record, stale = _running_record(pidfile)
    if record is None:
        pidfile.unlink(missing_ok=True)
        return False, {"stale_pidfile_removed": stale}
    pid = int(record["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = False
    if _alive(pid):
        killed = True
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    if pid in _CHILDREN:
        _CHILDREN.pop(pid).wait(timeout=5)
    pidfile.unlink(missing_ok=True)
    return True, {"pid": pid, "killed": killed}


# ---------------------------------------------------------------------------------------------------------
# systemd and launchd.


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", *(() if os.geteuid() == 0 else ("--user",)), *args]


def systemd_unit_path(info: dict[str, Any]) -> Path:
    """Where the unit is installed: /etc/systemd/system as root, else the user's systemd folder."""
    folder = Path("/etc/systemd/system") if os.geteuid() == 0 else Path.home() / ".config" / "systemd" / "user"
    return folder / info["systemd_unit"]


def launchd_plist_path(info: dict[str, Any]) -> Path:
    """Where the job is installed: the user's LaunchAgents."""
    return Path.home() / "Library" / "LaunchAgents" / f"{info['launchd_label']}.plist"


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise LaunchError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[:500]}")
    return done


def _install(source: Path, target: Path) -> bool:
    text = source.read_text(encoding="utf-8")
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(target, text)
    return True


def _start_systemd(entry_dir: Path, info: dict[str, Any], *, timeout: float | None,
                   wait: bool) -> tuple[bool, dict[str, Any]]:
    unit = info["systemd_unit"]
    written = _install(Path(entry_dir) / unit, systemd_unit_path(info))
    if written:
        _run(_systemctl("daemon-reload"))
    active = _run(_systemctl("is-active", unit), check=False).stdout.strip() == "active"
    if written and active:
        _run(_systemctl("restart", unit))
    elif not active:
        _run(_systemctl("enable", "--now", unit))
    details: dict[str, Any] = {"unit": str(systemd_unit_path(info))}
    if wait:
        details["waited_s"] = round(wait_healthy(entry_dir, timeout=timeout), 3)
    return written or not active, details


def _start_launchd(entry_dir: Path, info: dict[str, Any], *, timeout: float | None,
                   wait: bool) -> tuple[bool, dict[str, Any]]:
    label = info["launchd_label"]
    target = launchd_plist_path(info)
    written = _install(Path(entry_dir) / f"{label}.plist", target)
    domain = f"gui/{os.getuid()}"
    loaded = _run(["launchctl", "print", f"{domain}/{label}"], check=False).returncode == 0
    if loaded and written:
        _run(["launchctl", "bootout", f"{domain}/{label}"], check=False)
        loaded = False
    if not loaded:
        _run(["launchctl", "bootstrap", domain, str(target)])
    details: dict[str, Any] = {"plist": str(target)}
    if wait:
        details["waited_s"] = round(wait_healthy(entry_dir, timeout=timeout), 3)
    return written or not loaded, details


# ---------------------------------------------------------------------------------------------------------
# The public API.


def _resolve(supervisor: str) -> str:
    chosen = detect_supervisor() if supervisor == "auto" else supervisor
    if chosen not in ("process", "systemd", "launchd"):
        raise LaunchError(f"unknown supervisor {supervisor!r}; use auto, process, systemd or launchd")
    return chosen


def start(entry_dir: Path, *, supervisor: Supervisor | str = "auto", run_dir: Path | None = None,
          timeout: float | None = None, wait: bool = True, env: dict[str, str] | None = None,
          args: list[str] | None = None) -> StageResult:
    """Start a rendered entry under `supervisor` and wait for its health check; idempotent.

    `process` runs `start.sh` in its own session with a pidfile and log under `run_dir` (default
    `<entry_dir>/run`); a stale pidfile (dead or reused pid) is removed, and an entry re-rendered since it
    started is restarted. `systemd` installs the unit (user units unless root) and enables it; `launchd` installs
    the plist into ~/Library/LaunchAgents and bootstraps it. Already running and unchanged: `changed=False`.
    """
    started = time.perf_counter()
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    chosen = _resolve(supervisor)
    if chosen == "process":
        changed, details = _start_process(entry_dir, info, run_dir=run_dir, timeout=timeout, wait=wait, env=env,
                                          args=list(args or []))
    elif chosen == "systemd":
        changed, details = _start_systemd(entry_dir, info, timeout=timeout, wait=wait)
    else:
        changed, details = _start_launchd(entry_dir, info, timeout=timeout, wait=wait)
    url = entry_url(info)
    details.update(supervisor=chosen, entry=info["entry"], kind=info["kind"], url=url)
    state = "started" if changed else "already running"
    return StageResult(stage="launch", changed=changed, model=info["model"], seconds=time.perf_counter() - started,
                       summary=f"{info['entry']} ({info['kind']}) {state} under {chosen}"
                               + (f" at {url}" if url else ""), details=details)


def entry_url(info: dict[str, Any]) -> str | None:
    """Where a user reaches an entry: the page of a UI, the `/v1` base of an API; None for batch jobs."""
    if not info.get("port"):
        return None
    host = "127.0.0.1" if info["bind"] in ("0.0.0.0", "::", "") else info["bind"]
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{info['port']}"
    return f"{base}/v1" if info["kind"] in ("openai_api", "vllm_serve") else f"{base}/"


def stop(entry_dir: Path, *, supervisor: Supervisor | str = "auto", run_dir: Path | None = None,
         grace: float = 20.0) -> StageResult:
    """Stop a started entry: SIGTERM to its process group (SIGKILL after `grace` seconds), or stop the unit/job.

    Stopping what is not running is `changed=False`.
    """
    started = time.perf_counter()
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    chosen = _resolve(supervisor)
    if chosen == "process":
        changed, details = _stop_process(entry_dir, info, run_dir=run_dir, grace=grace)
    elif chosen == "systemd":
        unit = info["systemd_unit"]
        active = _run(_systemctl("is-active", unit), check=False).stdout.strip() == "active"
        if active:
            _run(_systemctl("disable", "--now", unit))
        changed, details = active, {"unit": unit}
    else:
        target = f"gui/{os.getuid()}/{info['launchd_label']}"
        loaded = _run(["launchctl", "print", target], check=False).returncode == 0
        if loaded:
            _run(["launchctl", "bootout", target])
        changed, details = loaded, {"label": info["launchd_label"]}
    details["supervisor"] = chosen
    return StageResult(stage="stop", changed=changed, model=info["model"], seconds=time.perf_counter() - started,
                       summary=f"{info['entry']} {'stopped' if changed else 'was not running'}", details=details)


def status(entry_dir: Path, *, supervisor: Supervisor | str = "auto", run_dir: Path | None = None) -> dict[str, Any]:
    """Whether an entry runs and answers its health check: {entry, kind, running, healthy, pid, url, ...}."""
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    chosen = _resolve(supervisor)
    result: dict[str, Any] = {"model": info["model"], "entry": info["entry"], "kind": info["kind"],
                              "supervisor": chosen, "url": entry_url(info), "pid": None}
    if chosen == "process":
        pidfile, log = _run_files(entry_dir, info, run_dir)
        record, stale = _running_record(pidfile)
        result.update(running=record is not None, pid=record and record["pid"], stale_pidfile=stale, log=str(log))
    elif chosen == "systemd":
        state = _run(_systemctl("is-active", info["systemd_unit"]), check=False).stdout.strip()
        result.update(running=state == "active", state=state)
    else:
        done = _run(["launchctl", "print", f"gui/{os.getuid()}/{info['launchd_label']}"], check=False)
        result.update(running=done.returncode == 0 and "state = running" in done.stdout)
    result["healthy"] = bool(result["running"]) and probe(info)
    return result
