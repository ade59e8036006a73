"""Where the shipped manifests and launch templates live, in a checkout or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent.parent


def _locate(checkout_name: str, packaged_name: str) -> Path:
    for candidate in (_CHECKOUT / checkout_name, _PACKAGE / packaged_name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {checkout_name}/ folder next to the modelrig package")


def manifest_dirs() -> list[Path]:
    """Folders searched for manifests: `$MODELRIG_MANIFESTS` (os.pathsep-separated) first, then the shipped ones."""
    extra = [Path(p) for p in os.environ.get("MODELRIG_MANIFESTS", "").split(os.pathsep) if p]
    return [*extra, _locate("model_manifests", "_manifests")]


def launch_dir() -> Path:
    """The folder holding the Jinja2 launch templates."""
    return _locate("launch", "_launch")


def project_root() -> Path | None:
    """The checkout root when running from a source tree (the Ansible roles and playbooks live there)."""
    return _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None
