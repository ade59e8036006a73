"""The supervised background process: `start.sh` in its own session, a pidfile and a log (no init system, e.g.
AutoDL containers).

A pidfile records the pid, the process's creation time (psutil, so macOS works too) and the rendered-files key.
A process is only ever signalled when both pid and creation time match: a pidfile without a creation time, or
whose pid now belongs to another process, is stale and is never used to kill anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from modelrig.launch.entry import rendered_key
from modelrig.launch.health import ensure_port_free, probe, wait_healthy
from modelrig.stamp import atomic_write_text

#: Children started by this Python process, so their exit is reaped and noticed (no zombies counted as alive).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

#: Environment variables that hold hub credentials: only the processes that download get them, never a service.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_TOKEN")


def service_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a launched service gets: ours without hub tokens, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(extra or {})
    return env


def run_files(info: dict[str, Any], entry_dir: Path, run_dir: Path | None) -> tuple[Path, Path]:
    """(pidfile, log) of an entry: under `run_dir`, default `<entry_dir>/run`."""
    folder = Path(run_dir) if run_dir is not None else Path(entry_dir) / "run"
    return folder / f"{info['entry']}.pid", folder / f"{info['entry']}.log"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _exit_status(pid: int) -> int | None:
    """The exit status once `pid` has ended (-1 when it is not our child), None while it runs."""
    if _alive(pid):
        return None
    child = _CHILDREN.get(pid)
    return child.returncode if child is not None and child.returncode is not None else -1


def _read_pidfile(pidfile: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(pidfile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def confirmed(record: dict[str, Any] | None) -> bool:
    """Whether a pidfile record still names the process modelrig started (same pid, same creation time)."""
    if not record:
        return False
    pid, created = record.get("pid"), record.get("create_time")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(created, (int, float)):
        return False
    actual = _create_time(pid)
    return actual is not None and abs(actual - created) < 0.05 and _alive(pid)


def running_record(pidfile: Path) -> tuple[dict[str, Any] | None, bool]:
    """(the pidfile's record if its process is confirmed running, whether a stale pidfile was found)."""
    record = _read_pidfile(pidfile)
    if record is None:
        return None, pidfile.exists()
    if confirmed(record):
        return record, False
    return None, True


class ProcessSupervisor:
    """Runs entries as supervised background processes."""

    name = "process"

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir

    def check(self, entry_dir: Path, info: dict[str, Any]) -> list[str]:
        """Why `start` would change something (empty: it would not)."""
        pidfile, _ = run_files(info, entry_dir, self.run_dir)
        record, stale = running_record(pidfile)
        if record is None:
            return ["stale pidfile: the recorded process is gone"] if stale else ["service is stopped"]
        if record.get("key") != rendered_key(entry_dir):
            return ["launch files were re-rendered since the service started (restart)"]
        if not probe(info):
            return ["service runs but does not answer its health check"]
        return []

    def start(self, entry_dir: Path, info: dict[str, Any], *, timeout: float | None, wait: bool,
              env: dict[str, str] | None, args: list[str]) -> tuple[bool, dict[str, Any]]:
        """Start (or find running) one entry; (changed, details)."""
        pidfile, log = run_files(info, entry_dir, self.run_dir)
        record, stale = running_record(pidfile)
        key = rendered_key(entry_dir)
        details: dict[str, Any] = {"pidfile": str(pidfile), "log": str(log), "stale_pidfile_removed": stale}
        if record is not None:
            if record.get("key") == key:
                details["pid"] = record["pid"]
                if wait:
                    details["waited_s"] = round(wait_healthy(info, timeout=timeout, pid=record["pid"], log=log,
                                                             exited=lambda: _exit_status(record["pid"])), 3)
                return False, details
            self.stop(entry_dir, info)  # re-rendered since it started: restart it
            details["restarted"] = True
        if stale:
            pidfile.unlink(missing_ok=True)
        ensure_port_free(info)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"--- modelrig start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            out.flush()
            proc = subprocess.Popen(["/bin/sh", str(Path(entry_dir) / "start.sh"), *args], cwd=entry_dir,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=service_environment(env))
        _CHILDREN[proc.pid] = proc
        atomic_write_text(pidfile, json.dumps({"pid": proc.pid, "create_time": _create_time(proc.pid), "key": key,
                                               "entry_dir": str(entry_dir), "started": time.time()}) + "\n")
        details["pid"] = proc.pid
        if wait:
            try:
                details["waited_s"] = round(wait_healthy(info, timeout=timeout, pid=proc.pid, log=log,
                                                         exited=lambda: _exit_status(proc.pid)), 3)
            except Exception:
                self.stop(entry_dir, info)
                raise
        return True, details

    def stop(self, entry_dir: Path, info: dict[str, Any], *, grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
        """SIGTERM to the process group (SIGKILL after `grace` seconds); a stale pidfile signals nothing."""
        pidfile, _ = run_files(info, entry_dir, self.run_dir)
        record, stale = running_record(pidfile)
        if record is None:
            pidfile.unlink(missing_ok=True)
            return False, {"stale_pidfile_removed": stale}
        pid = int(record["pid"])
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = False
        if _alive(pid):
            killed = True
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
        if pid in _CHILDREN:
            _CHILDREN.pop(pid).wait(timeout=5)
        pidfile.unlink(missing_ok=True)
        return True, {"pid": pid, "killed": killed}

    def status(self, entry_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """{running, pid, stale_pidfile, log}."""
        pidfile, log = run_files(info, entry_dir, self.run_dir)
        record, stale = running_record(pidfile)
        return {"running": record is not None, "pid": record and record["pid"], "stale_pidfile": stale,
                "log": str(log)}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
