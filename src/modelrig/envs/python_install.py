"""Installing the Python a plan or lock names when the host has none: uv-managed CPython under the data root.

uv downloads python-build-standalone builds and refuses any archive whose sha256 differs from the one its
downloads list gives (uv's own pinned list, or `python.downloads_json_url`), so a mirror (`python.mirror`) can
serve the bytes but cannot change them. Everywhere else the engine runs uv with Python downloads off
(`UV_PYTHON_DOWNLOADS=never`); this explicit step alone allows them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from modelrig.config import DataRoot, PythonSettings
from modelrig.envs.tools import Interpreter, clean_environ, probe_python
from modelrig.errors import EnvBuildError


def managed_python_dir(data: DataRoot) -> Path:
    """Where uv installs the Pythons modelrig asks for: `<data root>/python/` (a data disk, not the home)."""
    return data.root / "python"


def python_install_environ(settings: PythonSettings, *, install_dir: Path) -> dict[str, str]:
    """The environment of `uv python install`: explicit downloads allowed, into `install_dir`, from the mirror
    and downloads list the host config names (uv's defaults when unset)."""
    extra = {"UV_PYTHON_DOWNLOADS": "manual", "UV_PYTHON_INSTALL_DIR": str(install_dir)}
    if settings.mirror:
        extra["UV_PYTHON_INSTALL_MIRROR"] = settings.mirror.rstrip("/")
    if settings.downloads_json_url:
        extra["UV_PYTHON_DOWNLOADS_JSON_URL"] = settings.downloads_json_url
    return clean_environ(extra)


def python_install_command(*, uv: str, version: str) -> list[str]:
    """`uv python install VERSION` without touching `~/.local/bin` or the Windows registry, ignoring uv.toml."""
    return [uv, "python", "install", "--no-config", "--no-bin", "--no-registry", version]


def find_managed_python(*, uv: str, version: str, install_dir: Path) -> Interpreter | None:
    """The uv-managed interpreter of `version` ("3.10" or "3.10.13") in `install_dir`, or None."""
    try:
        out = subprocess.run([uv, "python", "find", "--no-config", "--no-project", "--system", "--managed-python",
                              version], capture_output=True, text=True, timeout=60, check=False,
                             env=clean_environ({"UV_PYTHON_INSTALL_DIR": str(install_dir)}))
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = out.stdout.strip()
    if out.returncode != 0 or not found:
        return None
    interp = probe_python(found)
    return interp if interp is not None and version in (interp.version, interp.minor) else None


def install_python(version: str, *, uv: str, data: DataRoot, settings: PythonSettings) -> Interpreter:
    """Install Python `version` with uv into the data root and return it; EnvBuildError naming the version, the
    reason (e.g. uv's hash mismatch) and the log when it cannot be installed or does not run afterwards."""
    from modelrig.envs.build import run_logged

    if settings.install == "never":
        raise EnvBuildError(f"no Python {version} on this host and python.install is 'never' in the host config "
                            f"({data.config_file}); install Python {version} or set python.install: uv",
                            code="python_missing", python=version)
    install_dir = managed_python_dir(data)
    install_dir.mkdir(parents=True, exist_ok=True)
    log = install_dir / f"install-{version}.log"
    log.write_text("", encoding="utf-8")
    where = f" from the mirror {settings.mirror}" if settings.mirror else ""
    try:
        run_logged(python_install_command(uv=uv, version=version),
                   env=python_install_environ(settings, install_dir=install_dir), log=log,
                   what=f"install Python {version} with uv{where}",
                   hint="python.mirror (a mirror of python-build-standalone's releases) and python.downloads_json_url "
                        f"in the host config ({data.config_file}) say where it comes from",
                   fields={"python": version})
    except EnvBuildError as exc:
        raise EnvBuildError(str(exc), code="python_install_failed", **exc.fields) from None
    interp = find_managed_python(uv=uv, version=version, install_dir=install_dir)
    if interp is None:
        raise EnvBuildError(f"uv installed Python {version} into {install_dir}, but no working python{version} is "
                            f"there (log: {log})", code="python_install_failed", python=version, log=str(log))
    return interp
