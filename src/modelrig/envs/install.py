"""Command lines that create an env and install packages into it with uv (fast path) or pip (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modelrig.config import PipSettings
from modelrig.plan import EnvPlan

Installer = Literal["uv", "pip"]


@dataclass(frozen=True)
class Indexes:
    """Where packages come from: a PyPI mirror, extra indexes, local wheel folders and the torch wheel index."""

    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    #: The PyTorch variant index torch is installed from; None takes torch from the normal indexes.
    torch_index_url: str | None = None
    #: Use only what is already cached (uv) or in the find-links folders (pip); never reach an index.
    offline: bool = False


def indexes_for(env: EnvPlan, pip: PipSettings, *, offline: bool = False) -> Indexes:
    """The indexes for one env: the host's pip settings plus the torch index the plan chose (when enabled)."""
    torch_index = env.torch.index_url if pip.use_torch_index else None
    return Indexes(index_url=pip.index_url, extra_index_urls=list(pip.extra_index_urls),
                   find_links=list(pip.find_links), torch_index_url=torch_index, offline=offline)


def create_venv_command(*, installer: Installer, uv: str | None, base_python: str, path: Path) -> list[str]:
    """`uv venv` (no pip inside; uv installs from outside) or `python -m venv` (with pip) at `path`."""
    if installer == "uv":
        return [_need(uv), "venv", "--no-project", "--no-config", "--python", base_python, str(path)]
    return [base_python, "-m", "venv", str(path)]


def create_conda_command(*, conda: str, path: Path, python: str, channels: list[str]) -> list[str]:
    """`conda create -y -p PATH python=X.Y` with only the host's channels (a mirror works the same way)."""
    cmd = [conda, "create", "-y", "-q", "-p", str(path), "--override-channels"]
    for channel in channels:
        cmd += ["-c", channel]
    return [*cmd, f"python={python}"]


def install_command(
    requirements: list[str],
    *,
    installer: Installer,
    uv: str | None,
    python: Path,
    index_url: str | None,
    extra_index_urls: list[str],
    find_links: list[str],
    offline: bool,
    constraints: Path | None = None,
) -> list[str]:
    """One install into the env whose interpreter is `python`.

    With uv, several sources (extra indexes, find-links) get `--index-strategy unsafe-best-match`, so the best
    version wins wherever it is (e.g. a local `+cpu` torch wheel next to PyPI); offline, uv uses its cache only
    and pip only the find-links folders.
    """
    if installer == "uv":
        cmd = [_need(uv), "pip", "install", "--no-config", "--python", str(python)]
    else:
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if offline:
        cmd.append("--offline" if installer == "uv" else "--no-index")
    if index_url and not (offline and installer == "pip"):
        cmd += ["--index-url", index_url]
    if not (offline and installer == "pip"):
        for url in extra_index_urls:
            cmd += ["--extra-index-url", url]
    for link in find_links:
        cmd += ["--find-links", link]
    if installer == "uv" and (extra_index_urls or find_links):
        cmd += ["--index-strategy", "unsafe-best-match"]
    if constraints is not None:
        cmd += ["--constraint", str(constraints)]
    return [*cmd, *requirements]


def install_commands(
    env: EnvPlan,
    packages: list[str],
    *,
    installer: Installer,
    uv: str | None,
    python: Path,
    indexes: Indexes,
    constraints: Path,
) -> list[list[str]]:
    """torch first (from its variant index when one is used), then the packages with torch held in place.

    The second install is constrained by the torch requirements (written to `constraints`), so a package that
    depends on torch can never swap the planned build for another one from PyPI.
    """
    commands: list[list[str]] = []
    torch_reqs = list(env.torch.requirements)
    if torch_reqs:
        if indexes.torch_index_url:
            commands.append(install_command(torch_reqs, installer=installer, uv=uv, python=python,
                                            index_url=indexes.torch_index_url, extra_index_urls=[],
                                            find_links=indexes.find_links, offline=indexes.offline))
        else:
            commands.append(install_command(torch_reqs, installer=installer, uv=uv, python=python,
                                            index_url=indexes.index_url, extra_index_urls=indexes.extra_index_urls,
                                            find_links=indexes.find_links, offline=indexes.offline))
    if packages:
        commands.append(install_command(packages, installer=installer, uv=uv, python=python,
                                        index_url=indexes.index_url, extra_index_urls=indexes.extra_index_urls,
                                        find_links=indexes.find_links, offline=indexes.offline,
                                        constraints=constraints if torch_reqs else None))
    return commands


def _need(uv: str | None) -> str:
    if not uv:
        raise ValueError("installer 'uv' needs the path of the uv executable")
    return uv
