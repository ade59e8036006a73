"""Who holds a store folder's fetch lock: the fetch downloading into it records its pid and process creation time
beside the lock (`.modelrig-fetch.holder`), so that a fetch still running there (one a play interrupted with
Ctrl-C left on the host) is named by the next fetch instead of waited for unseen, and, when that fetch is asked to
take over, stopped: its finished files stay, its partial ones are resumed, and two fetches never write one folder.

A holder is only ever signalled when its pid, creation time, owner and command line (`fetch`) all match the record:
a stale record, or one whose pid now names another process, signals nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from modelrig.stamp import atomic_write_text, temporaries_of

HOLDER_NAME = ".modelrig-fetch.holder"


def record(target: Path) -> None:
    """Note this process as the one downloading into `target` (the caller holds the folder's lock).

    A record's temporary left beside it is a fetch's SIGKILLed mid-write (only the lock's holder writes one, and
    the kernel freed its lock): it goes first, or the next fetch would take that stray file for one it did not
    write and refuse the folder for good."""
    for stale in temporaries_of(target / HOLDER_NAME):
        stale.unlink(missing_ok=True)
    me = psutil.Process()
    atomic_write_text(target / HOLDER_NAME, json.dumps({"pid": me.pid, "create_time": me.create_time(),
                                                        "started": time.time()}) + "\n")


def clear(target: Path) -> None:
    """Remove this process's record (the lock is being released)."""
    with contextlib.suppress(OSError):
        if json.loads((target / HOLDER_NAME).read_text(encoding="utf-8")).get("pid") == os.getpid():
            (target / HOLDER_NAME).unlink()


def current(target: Path) -> dict[str, Any] | None:
    """The record of the fetch that holds `target`'s lock, when its process is confirmed running; else None."""
    try:
        held = json.loads((target / HOLDER_NAME).read_text(encoding="utf-8"))
        pid, created = int(held["pid"]), float(held["create_time"])
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > 0.05 or proc.uids().real != os.getuid() \
                or "fetch" not in proc.cmdline() or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return {"pid": pid, "create_time": created, "running_s": round(time.time() - float(held.get("started", created)))}


def describe(held: dict[str, Any]) -> str:
    """`pid N, running for M s`."""
    return f"pid {held['pid']}, running for {held['running_s']} s"


def stop(held: dict[str, Any], *, grace: float = 30.0) -> None:
    """SIGTERM the confirmed holder (SIGKILL after `grace` seconds) and wait until it is gone."""
    proc = psutil.Process(held["pid"])
    if abs(proc.create_time() - held["create_time"]) > 0.05:
        return
    proc.send_signal(signal.SIGTERM)
    if not _gone(proc, grace):
        proc.kill()
        _gone(proc, 10.0)


def _gone(proc: psutil.Process, wait: float) -> bool:
    """Wait up to `wait` seconds for `proc` to end (a zombie its parent has not reaped yet counts as ended)."""
    ends = time.monotonic() + wait
    while time.monotonic() < ends:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
