"""Building a model env: plan the commands (pure), run them under a lock, smoke-check, then stamp.

Atomicity: venvs and conda envs are not relocatable (absolute shebangs, `pyvenv.cfg`, conda prefixes baked into
files), so an env is built in place at its final path `envs/<key>/` and is complete only once its stamp is
written, after the smoke check passed. A directory without a matching stamp is a leftover of an interrupted or
failed build: the next build deletes it first. A failed build deletes its directory and keeps only the log
`envs/<key>.log`. A lock file `envs/<key>.lock` serialises concurrent builds of the same env.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelrig.config import DataRoot, HostConfig
from modelrig.envs.install import (
    Installer,
    create_conda_command,
    create_venv_command,
    indexes_for,
    install_commands,
)
from modelrig.envs.python_install import install_python as install_uv_python
from modelrig.envs.python_install import managed_python_dir
from modelrig.envs.smoke import describe, smoke_check
from modelrig.envs.spec import Backend, env_key, package_requirements, resolved_spec
from modelrig.envs.tools import (
    RUSTUP_HINT,
    clean_environ,
    conda_missing_message,
    find_conda,
    find_python,
    find_rust,
    find_uv,
)
from modelrig.errors import EnvBuildError
from modelrig.plan import EnvPlan
from modelrig.result import StageResult
from modelrig.stamp import read_stamp, write_stamp

ENV_STAMP_VERSION = 1
CONSTRAINTS_NAME = "modelrig-constraints.txt"


@dataclass(frozen=True)
class EnvBuildPlan:
    """Everything a build will do, decided before anything runs (shown by `modelrig env --dry-run`)."""

    key: str
    path: Path
    spec: dict[str, Any]
    backend: Backend
    installer: Installer
    #: The env's own interpreter once built.
    python: Path
    #: The torch requirements, written to the constraints file before the package install.
    constraints: list[str]
    commands: list[list[str]]
    #: Set when tokenizers is built from a git ref (needs cargo and rustc).
    needs_rust: bool
    warnings: list[str] = field(default_factory=list)
    #: The PyTorch variant index the first install takes torch from; None when torch comes from the normal indexes.
    torch_index_url: str | None = None
    #: The interpreter a venv is made from (None for conda, which brings its own).
    base_python: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "path": str(self.path), "backend": self.backend, "installer": self.installer,
                "python": str(self.python), "commands": self.commands, "needs_rust": self.needs_rust,
                "warnings": list(self.warnings), "spec": self.spec}


def plan_env_build(
    env: EnvPlan,
    *,
    envs_dir: Path,
    config: HostConfig,
    backend: Backend = "venv",
    installer: Installer = "uv",
    uv: str | None = None,
    base_python: str | None = None,
    python_version: str | None = None,
    conda: str | None = None,
    offline: bool = False,
) -> EnvBuildPlan:
    """The env directory, its key and the exact commands, from the plan and what was found on the host (pure).

    `base_python`/`python_version` are the venv backend's interpreter; the conda backend creates its own Python
    (`python=X.Y`), so its key uses the plan's version and `conda` is the conda executable.
    """
    version = python_version if backend == "venv" and python_version else env.python
    spec = resolved_spec(env, backend=backend, python_version=version)
    key = env_key(spec)
    path = envs_dir / key
    python = path / "bin" / "python"
    if backend == "venv":
        if not base_python:
            raise ValueError("the venv backend needs base_python")
        create = create_venv_command(installer=installer, uv=uv, base_python=base_python, path=path)
    else:
        if not conda:
            raise ValueError("the conda backend needs the conda executable")
        create = create_conda_command(conda=conda, path=path, python=env.python, channels=list(config.conda.channels))
    packages = package_requirements(env)
    indexes = indexes_for(env, config.pip, offline=offline)
    installs = install_commands(env, packages, installer=installer, uv=uv, python=python, indexes=indexes,
                                constraints=path / CONSTRAINTS_NAME)
    needs_rust = bool(env.tokenizers and env.tokenizers.get("source") == "git")
    torch_index = indexes.torch_index_url if env.torch.requirements else None
    return EnvBuildPlan(key=key, path=path, spec=spec, backend=backend, installer=installer, python=python,
                        constraints=list(env.torch.requirements), commands=[create, *installs],
                        needs_rust=needs_rust, torch_index_url=torch_index,
                        base_python=base_python if backend == "venv" else None)


def resolve_installer(requested: Literal["auto", "uv", "pip"]) -> tuple[Installer, str | None]:
    """uv when available (or asked for), else pip; returns the installer and uv's path."""
    uv = find_uv()
    if requested == "pip":
        return "pip", uv
    if uv is None:
        if requested == "uv":
            raise EnvBuildError("--installer uv: uv not found (pip install uv, or use --installer pip)")
        return "pip", None
    return "uv", uv


def prepare_env_build(
    env: EnvPlan,
    *,
    data: DataRoot,
    config: HostConfig,
    backend: Backend = "venv",
    python: str | None = None,
    installer: Literal["auto", "uv", "pip"] = "auto",
    offline: bool = False,
    exact_python: str | None = None,
    install_python: bool = False,
) -> EnvBuildPlan:
    """Find the interpreter/conda and installer on this host, then plan the build.

    The venv backend takes a Python of the plan's version (`exact_python`, e.g. a lock's "3.11.7": exactly that
    release); with `install_python`, one the host lacks is installed with uv first (host config `python:`).
    """
    chosen, uv = resolve_installer(installer)
    warnings: list[str] = []
    base_python = version = conda = None
    if backend == "venv":
        wanted = exact_python or env.python
        managed = managed_python_dir(data)
        try:
            interp, warnings = find_python(wanted, explicit=python, managed_dir=managed)
        except EnvBuildError as exc:
            if exc.code != "python_missing" or python or not install_python or uv is None:
                raise
            interp = install_uv_python(wanted, uv=uv, data=data, settings=config.python)
            warnings = [f"installed Python {interp.version} with uv into {managed}"]
        base_python, version = interp.path, interp.version
    else:
        conda = find_conda(config.conda)
        if conda is None:
            raise EnvBuildError(conda_missing_message(config.conda))
    plan = plan_env_build(env, envs_dir=data.envs, config=config, backend=backend, installer=chosen, uv=uv,
                          base_python=base_python, python_version=version, conda=conda, offline=offline)
    return dataclasses.replace(plan, warnings=warnings)


def env_is_complete(plan: EnvBuildPlan) -> dict[str, Any] | None:
    """The stamp of a finished env with this key, or None."""
    stamp = read_stamp(plan.path)
    if stamp and stamp.get("key") == plan.key and plan.python.exists():
        return stamp
    return None


def _check(plan: EnvBuildPlan, *, data: DataRoot, start: float, model: str | None) -> StageResult:
    """What a build of `plan` would do, touching nothing: `changed` when no complete env has this spec, with why."""
    stamp = env_is_complete(plan)
    if stamp is not None:
        result = _result(plan, stamp, changed=False, start=start, model=model)
        result.check = True
        return result
    if read_stamp(plan.path) is not None:
        reason = f"env {plan.key} is incomplete (its interpreter {plan.python} is missing)"
    elif plan.path.exists():
        reason = f"env {plan.key} was interrupted while building (no stamp)"
    else:
        others = sorted(p.name for p in data.envs.glob("*") if p.is_dir() and read_stamp(p)) \
            if data.envs.is_dir() else []
        reason = f"no env with this spec (key {plan.key}) yet" + (
            f"; the spec differs from the built env(s) {', '.join(others)} (a changed pin, Python or torch build "
            "builds a new env beside them)" if others else "")
    return StageResult(stage="env", changed=True, check=True, model=model, reasons=[reason],
                       summary=f"would build {plan.backend} env {plan.key} with {plan.installer}",
                       seconds=time.perf_counter() - start,
                       details={"key": plan.key, "path": str(plan.path), "python": str(plan.python),
                                "backend": plan.backend, "installer": plan.installer,
                                "warnings": list(plan.warnings)})


def build_env(
    env: EnvPlan,
    *,
    data: DataRoot,
    config: HostConfig,
    backend: Backend = "venv",
    python: str | None = None,
    installer: Literal["auto", "uv", "pip"] = "auto",
    offline: bool = False,
    model: str | None = None,
    check: bool = False,
) -> StageResult:
    """Create (or find) the env for `env`; `changed=False` when a complete env with the same spec exists.

    Raises EnvBuildError with one line naming the failing command and the log file; nothing is left that looks
    complete. With `check`, nothing is built or written: the result says whether a build would happen and why.
    """
    start = time.perf_counter()
    try:
        plan = prepare_env_build(env, data=data, config=config, backend=backend, python=python, installer=installer,
                                 offline=offline, install_python=not check)
    except EnvBuildError as exc:
        if not (check and exc.code == "python_missing" and config.python.install == "uv" and python is None):
            raise
        return StageResult(stage="env", changed=True, check=True, model=model, seconds=time.perf_counter() - start,
                           reasons=[f"no Python {env.python} on this host: it would be installed with uv"],
                           summary=f"would install Python {env.python} with uv and build a {backend} env",
                           details={"python": env.python, "backend": backend})
    if check:
        return _check(plan, data=data, start=start, model=model)
    data.envs.mkdir(parents=True, exist_ok=True)
    with _lock(data.envs / f"{plan.key}.lock"):
        stamp = env_is_complete(plan)
        if stamp is not None:
            return _result(plan, stamp, changed=False, start=start, model=model)
        if plan.needs_rust:
            rust = find_rust()
            if not rust.usable:
                raise EnvBuildError(f"tokenizers from {env.tokenizers.get('repo')}@{env.tokenizers.get('ref')} "
                                    f"needs cargo and rustc, not found; {RUSTUP_HINT}")
        if plan.path.exists():
            shutil.rmtree(plan.path)
        log = data.envs / f"{plan.key}.log"
        log.write_text("", encoding="utf-8")
        try:
            smoke = _run_build(plan, env, data=data, log=log)
        except BaseException:
            shutil.rmtree(plan.path, ignore_errors=True)
            raise
        stamp = {"key": plan.key, "version": ENV_STAMP_VERSION, "spec": plan.spec, "installer": plan.installer,
                 "python": str(plan.python), "smoke": smoke, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
        write_stamp(plan.path, stamp)
    return _result(plan, stamp, changed=True, start=start, model=model)


def _run_build(plan: EnvBuildPlan, env: EnvPlan, *, data: DataRoot, log: Path) -> dict[str, Any]:
    proc_env = installer_environ(data)
    create, *installs = plan.commands
    run_logged(create, env=proc_env, log=log, what="create the env")
    if plan.constraints:
        (plan.path / CONSTRAINTS_NAME).write_text("\n".join(plan.constraints) + "\n", encoding="utf-8")
    offline = any("--offline" in c or "--no-index" in c for c in installs)
    where = f"uv's cache {proc_env['UV_CACHE_DIR']}" if plan.installer == "uv" else "the find-links folders"
    what = f"{plan.installer} install" + (f" (offline: only packages in {where}; run once online or point "
                                          "UV_CACHE_DIR at a warm cache)" if offline else "")
    for index, cmd in enumerate(installs):
        first_torch = index == 0 and plan.torch_index_url and not offline
        hint = torch_index_hint(plan.torch_index_url, config_file=data.config_file) if first_torch else ""
        run_logged(cmd, env={**proc_env, "VIRTUAL_ENV": str(plan.path)}, log=log, what=what, hint=hint,
             fields={"torch_index_url": plan.torch_index_url} if hint else None)
    return smoke_check(plan.python, env_vars=env.env_vars)


def torch_index_hint(torch_index_url: str, *, config_file: Path | str = "<data root>/config.yaml") -> str:
    """What to change when the PyTorch index cannot be reached (a mirror-only network, e.g. in China): the host
    config settings that take torch from a mirror or a local wheel folder instead."""
    return (f"torch comes from the PyTorch index {torch_index_url}; if it is unreachable here, set in the host "
            f"config ({config_file}) `pip.use_torch_index: false` with `pip.index_url: <a PyPI mirror "
            "that has torch>` or `pip.find_links: [<a folder of torch wheels>]`, or `pip.torch_index_base: "
            "<a mirror of download.pytorch.org/whl>`")


def installer_environ(data: DataRoot) -> dict[str, str]:
    """The environment installers (uv, pip, conda) run with: isolated from the toolkit, caches under the data root
    unless UV_CACHE_DIR / PIP_CACHE_DIR say otherwise."""
    return clean_environ({"UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(data.cache / "uv"),
                          "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR") or str(data.cache / "pip")})


def run_logged(cmd: list[str], *, env: dict[str, str], log: Path, what: str, hint: str = "",
               fields: dict[str, Any] | None = None) -> None:
    """Run one build command with its output appended to `log`; EnvBuildError naming `what`, the reason found in
    the output and the log when it fails."""
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent, check=False)
        except OSError as exc:
            raise EnvBuildError(f"cannot {what}: {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        reason = failure_reason(log.read_text(encoding="utf-8", errors="replace"))
        raise EnvBuildError(f"{what} failed (exit {proc.returncode}): {reason}" + (f"; {hint}" if hint else "")
                            + f" (log: {log})", log=str(log), **(fields or {}))


_DECORATION = re.compile(r"^[\s×╰─▶│|:]+")


def failure_reason(output: str) -> str:
    """The most telling line of an installer's output: uv's "Because ..." cause, uv's last error with its first
    cause (e.g. the URL it could not fetch), pip's last ERROR, else the last line."""
    lines = [_DECORATION.sub("", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line and not line.startswith("$ ")]
    for line in lines:
        if "Because " in line:
            return line[line.index("Because "):]
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("error:"):
            reason = lines[index].removeprefix("error:").strip()
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return f"{reason}: {following.removeprefix('cause:').strip()}" if following.startswith("cause:") \
                else reason
    pip_errors = [line for line in lines if line.startswith("ERROR:")]
    if pip_errors:
        return next((line for line in pip_errors if line.startswith("ERROR: No matching distribution")),
                    pip_errors[-1])
    return lines[-1] if lines else "no output"


def _result(plan: EnvBuildPlan, stamp: dict[str, Any], *, changed: bool, start: float,
            model: str | None) -> StageResult:
    smoke = stamp.get("smoke", {})
    verb = "built" if changed else "exists"
    summary = f"{verb} {plan.backend} env {plan.key} ({describe(smoke)}) with {stamp.get('installer')}"
    details = {"key": plan.key, "path": str(plan.path), "python": str(plan.python), "backend": plan.backend,
               "installer": stamp.get("installer"), "smoke": smoke, "warnings": list(plan.warnings),
               "env_vars": dict(plan.spec["plan"].get("env_vars", {}))}
    return StageResult(stage="env", changed=changed, summary=summary, model=model,
                       seconds=time.perf_counter() - start, details=details)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
