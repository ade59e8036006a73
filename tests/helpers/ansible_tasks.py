"""Playbooks of single modelrig module tasks, driven with this toolkit env (the ansible module tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

#: The toolkit env the module tasks run the engine from (this one).
TOOLKIT = Path(sys.executable).parent.parent


def book(tmp: Path, tasks: list[dict]) -> Path:
    """`tmp/book.yml`: one play on all hosts running `tasks`."""
    path = tmp / "book.yml"
    path.write_text(yaml.safe_dump([{"name": "Drive modelrig.", "hosts": "all", "gather_facts": False,
                                     "tasks": tasks}], sort_keys=False))
    return path


def fetch_task(data_root: Path, url: str, token: str, model: str = "demo-tiny-ziya") -> dict:
    """A modelrig_fetch task of `model` into `data_root` from the hub at `url`."""
    return {"name": "Fetch the weights.", "modelrig_fetch": {
        "model": model, "toolkit_env": str(TOOLKIT), "data_root": str(data_root), "hf_endpoint": url,
        "hf_token": token}, "register": "fetched"}
