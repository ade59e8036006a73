"""The toolkit's own wheels for a bundle: modelrig and every package it depends on, pinned to the versions installed
in the toolkit env that makes the bundle, so a host with no route out installs the toolkit from the bundle alone
(`pip install --no-index --find-links <bundle>/modelrig modelrig`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from modelrig.config import PipSettings
from modelrig.envs.install import Indexes
from modelrig.envs.tools import clean_environ
from modelrig.errors import EnvBuildError
from modelrig.lock.packages import normalise

#: Installed beside the toolkit by the modelrig role (it installs modelrig with uv, and uv with the venv's own pip,
#: which `python -m venv` seeds without any index).
TOOLKIT_EXTRAS = ("uv",)


def toolkit_pins(root: str = "modelrig", *, extras: tuple[str, ...] = TOOLKIT_EXTRAS) -> list[str]:
    """`name==version` of `root` and every distribution it needs (markers evaluated for this interpreter), as
    installed here, sorted; plus `extras` where installed. `root` itself is left out (its wheel is built)."""
    seen: dict[str, str] = {}
    todo = [root, *extras]
    while todo:
        name = normalise(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name == normalise(root) or name in extras:
                continue
            raise EnvBuildError(f"the toolkit needs {name}, which is not installed in {sys.prefix}") from None
        seen[name] = dist.version
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(seen.items()) if name != normalise(root)]


def installed_toolkit_wheel() -> Path | None:
    """The wheel file this modelrig was installed from (the modelrig role's `<data root>/wheels/modelrig-*.whl`),
    when it is still there."""
    try:
        text = metadata.distribution("modelrig").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        url = json.loads(text or "{}").get("url", "")
    except ValueError:
        return None
    parts = urlsplit(url)
    path = Path(unquote(parts.path))
    return path if parts.scheme == "file" and path.suffix == ".whl" and path.is_file() else None


def toolkit_indexes(pip: PipSettings) -> Indexes:
    """Where the toolkit's wheels come from: the host's indexes and find-links, and PyTorch's CPU index (the
    toolkit's torch is a CPU build) unless `pip.use_torch_index` is off."""
    torch = f"{pip.torch_index_base.rstrip('/')}/cpu" if pip.use_torch_index else None
    return Indexes(index_url=pip.index_url, extra_index_urls=list(pip.extra_index_urls),
                   find_links=list(pip.find_links), torch_index_url=torch)


def collect_toolkit_wheels(folder: Path, *, indexes: Indexes, cache: Path) -> list[str]:
    """Put the toolkit's dependency wheels into `folder` (beside the modelrig wheel; copied from the installed wheel
    when `folder` has none), downloaded with `pip download --no-deps --only-binary=:all:` from the host's indexes;
    returns the pins. EnvBuildError naming pip's last line when a wheel cannot be had."""
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("modelrig-*.whl")):
        wheel = installed_toolkit_wheel()
        if wheel is None:
            raise EnvBuildError("no modelrig wheel to bundle: run from a source checkout (uv build) or a toolkit "
                                "installed from its wheel file (the modelrig Ansible role)")
        shutil.copy2(wheel, folder / wheel.name)
    pins = toolkit_pins()
    flags: list[str] = []
    if indexes.index_url:
        flags += ["--index-url", indexes.index_url]
    for url in [*indexes.extra_index_urls, *([indexes.torch_index_url] if indexes.torch_index_url else [])]:
        flags += ["--extra-index-url", url]
    for link in indexes.find_links:
        flags += ["--find-links", link]
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "-d", str(folder), *flags, *pins]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env=clean_environ({"PIP_CACHE_DIR": str(cache / "pip")}))
    if out.returncode != 0:
        last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), "no output")
        raise EnvBuildError(f"pip download of the toolkit's wheels failed: {last.strip()}")
    return pins
