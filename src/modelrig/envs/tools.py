"""Finding the programs an env build runs: a Python of the right version, uv, conda, and the Rust toolchain."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelrig.config import CondaSettings
from modelrig.errors import EnvBuildError

#: Variables that would leak another environment's packages or interpreter into a model env's processes.
LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PYTHONEXECUTABLE",
              "__PYVENV_LAUNCHER__", "UV_PROJECT_ENVIRONMENT")
#: Where Miniforge/conda installs usually live when neither host config nor $CONDA_EXE says.
CONDA_HOMES = ("~/miniforge3", "~/mambaforge", "~/miniconda3", "~/anaconda3", "/opt/conda", "/opt/miniforge3",
               "/root/miniconda3")
RUSTUP_HINT = ("install Rust with rustup: `curl https://sh.rustup.rs -sSf | sh -s -- -y` (in China first export "
               "RUSTUP_DIST_SERVER=https://rsproxy.cn RUSTUP_UPDATE_ROOT=https://rsproxy.cn/rustup), or the "
               "rust_toolchain Ansible role; or use a tokenizers wheel (tokenizers: {source: wheel})")


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that points Python at other packages, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARS and not k.startswith("CONDA_")}
    env["PYTHONNOUSERSITE"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    if not env.get("UV_NATIVE_TLS"):  # uv trusts the system store (a proxy's CA, a mirror's) as pip does
        env.setdefault("UV_SYSTEM_CERTS", "1")
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Interpreter:
    """A base Python interpreter for a venv."""

    path: str
    version: str  # "3.11.7"

    @property
    def minor(self) -> str:
        """ "3.11" """
        return ".".join(self.version.split(".")[:2])


#: Interpreters this process has already asked (one process plans an env several times: env, render, lock).
_PROBED: dict[str, Interpreter] = {}


def probe_python(path: str) -> Interpreter | None:
    """Run `path` and ask its real executable and version; None when it does not run (e.g. a dead pyenv shim).
    An answer is remembered for the rest of the process; a failure is not (the Python may be installed next)."""
    if path in _PROBED:
        return _PROBED[path]
    try:
        out = subprocess.run([path, "-c", "import sys,json;print(json.dumps([sys.executable,"
                              "'%d.%d.%d' % sys.version_info[:3]]))"],
                             capture_output=True, text=True, timeout=30, env=clean_environ(), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        executable, version = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    _PROBED[path] = Interpreter(path=executable or path, version=version)
    return _PROBED[path]


def python_candidates(version: str, *, managed_dir: Path | None = None) -> Iterator[str]:
    """Where a Python `version` ("3.11" or "3.11.7") may be: `python3.11` on PATH, pyenv versions, `uv python find`
    (uv's own installs), and the Pythons modelrig installed with uv into `managed_dir`; in that order, each looked
    up only when the ones before it were not taken (`uv python find` costs a process)."""
    minor = ".".join(version.split(".")[:2])
    if exe := shutil.which(f"python{minor}"):
        yield exe
    pyenv_root = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    yield from sorted(glob.glob(str(pyenv_root / "versions" / f"{minor}.*" / "bin" / f"python{minor}")),
                      reverse=True)
    if uv := find_uv():
        places = [{}] + ([{"UV_PYTHON_INSTALL_DIR": str(managed_dir)}] if managed_dir is not None else [])
        for extra in places:
            try:
                out = subprocess.run([uv, "python", "find", "--no-config", "--no-project", "--system", version],
                                     capture_output=True, text=True, timeout=30, env=clean_environ(extra),
                                     check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out.returncode == 0 and out.stdout.strip():
                yield out.stdout.strip()


def find_python(version: str, *, explicit: str | None = None,
                managed_dir: Path | None = None) -> tuple[Interpreter, list[str]]:
    """The base interpreter for a venv of Python `version` ("3.11": any patch release; "3.11.7": exactly that one),
    and warnings.

    `explicit` (`--python PATH`) wins even when its version differs from the manifest's (that is a warning).
    """
    if explicit:
        interp = probe_python(explicit)
        if interp is None:
            raise EnvBuildError(f"--python {explicit}: not a working Python interpreter")
        warnings = [] if version in (interp.minor, interp.version) else [
            f"--python {explicit} is Python {interp.version}, the manifest asks for {version}"]
        return interp, warnings
    for candidate in python_candidates(version, managed_dir=managed_dir):
        interp = probe_python(candidate)
        if interp is not None and version in (interp.minor, interp.version):
            return interp, []
    raise EnvBuildError(f"no Python {version} found (looked for python{version} on PATH, pyenv versions, "
                        f"`uv python find {version}`); install it (e.g. `pyenv install {version}`), pass "
                        "--python PATH, set python.install: uv in the host config, or use --backend conda",
                        code="python_missing", python=version)


def find_uv() -> str | None:
    """uv next to this interpreter (the toolkit env ships it), else on PATH."""
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def find_conda(settings: CondaSettings) -> str | None:
    """The conda (or mamba) executable of an existing install: host config prefix, $CONDA_EXE, usual homes."""
    homes = [settings.prefix] if settings.prefix else []
    if exe := os.environ.get("CONDA_EXE"):
        if Path(exe).is_file():
            return exe
    homes += list(CONDA_HOMES)
    for home in homes:
        for name in ("conda", "mamba"):
            candidate = Path(home).expanduser() / "bin" / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    if settings.prefix:
        return None
    return shutil.which("conda")


def conda_missing_message(settings: CondaSettings) -> str:
    """What to do when the conda backend is asked for and no install is found."""
    where = f"conda.prefix {settings.prefix}" if settings.prefix else "$CONDA_EXE, ~/miniforge3 and PATH"
    return (f"no conda found ({where}); install Miniforge (https://github.com/conda-forge/miniforge, or the "
            "miniforge Ansible role) and set conda.prefix in the host config, or use --backend venv")


@dataclass(frozen=True)
class RustToolchain:
    """cargo and rustc as found on this host."""

    cargo: str | None
    rustc: str | None
    cargo_version: str | None = None
    rustc_version: str | None = None

    @property
    def usable(self) -> bool:
        """Both programs are present."""
        return bool(self.cargo and self.rustc)


def find_rust() -> RustToolchain:
    """Look for cargo/rustc on PATH and in ~/.cargo/bin, with their versions."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path("~/.cargo/bin").expanduser())])
    cargo, rustc = shutil.which("cargo", path=search), shutil.which("rustc", path=search)
    return RustToolchain(cargo=cargo, rustc=rustc, cargo_version=_version_of(cargo), rustc_version=_version_of(rustc))


def _version_of(exe: str | None) -> str | None:
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\d+\.\d+\.\d+", out)
    return match.group(0) if match else None
