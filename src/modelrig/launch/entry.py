"""A rendered launch entry as the supervisors see it: its `entry.json`, its URL and its rendered-files key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelrig.errors import LaunchError
from modelrig.launch.kinds import launch_kind
from modelrig.launch.render import ENTRY_FILE
from modelrig.stamp import read_stamp


def read_entry(entry_dir: Path) -> dict[str, Any]:
    """The `entry.json` that `render` wrote for an entry; LaunchError when the folder was never rendered."""
    path = Path(entry_dir) / ENTRY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"{entry_dir}: not a rendered launch entry (no {ENTRY_FILE}); run `modelrig render` "
                          "first", path=str(entry_dir)) from None
    except ValueError as exc:
        raise LaunchError(f"{path}: unreadable ({exc}); re-run `modelrig render`", path=str(path)) from None


def entry_url(info: dict[str, Any]) -> str | None:
    """Where a user reaches an entry: the page of a UI, the `/v1` base of an API; None for batch jobs."""
    if not info.get("port"):
        return None
    host = "127.0.0.1" if info["bind"] in ("0.0.0.0", "::", "") else info["bind"]
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{info['port']}"
    # a service that is not a demo kind (the fleet hub) names its own path
    return base + (info["url_path"] if "url_path" in info else launch_kind(info["kind"]).url_path)


def rendered_key(entry_dir: Path) -> str | None:
    """The digest of the entry's rendered files (changes when `render` rewrote something)."""
    stamp = read_stamp(entry_dir)
    return stamp.get("key") if stamp else None
