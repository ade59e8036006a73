"""A model env's exact package set: frozen with `uv pip freeze`, hashed with `uv pip compile --generate-hashes`
against the indexes the env was built from; where uv gives no hash (find-links folders and wheel folders or index
mirrors served without `#sha256=` links, e.g. a local torch wheel or a mirror's), the wheel itself is hashed."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from packaging.tags import Tag, compatible_tags, cpython_tags, platform_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from modelrig.envs.install import Indexes
from modelrig.envs.tools import clean_environ, find_uv, probe_python
from modelrig.errors import EnvBuildError
from modelrig.stamp import sha256_file

_GIT = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*@\s*git\+(?P<url>.+)@(?P<commit>[0-9a-f]{40})(?:#.*)?$")


@dataclass(frozen=True)
class Frozen:
    """One line of `uv pip freeze`: the distribution's name, version (or direct reference) and the line itself."""

    name: str
    version: str
    requirement: str
    git_commit: str | None = None


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def uv_or_fail() -> str:
    """The uv executable; locks and rebuilds need it."""
    uv = find_uv()
    if uv is None:
        raise EnvBuildError("uv not found: `pip install uv` (locks and rebuilds use uv to freeze and hash envs)")
    return uv


def freeze(python: Path | str, *, env: dict[str, str] | None = None) -> list[Frozen]:
    """The distributions installed in the env of `python`, sorted by name."""
    cmd = [uv_or_fail(), "pip", "freeze", "--no-config", "--python", str(python)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_environ(env), check=False)
    if out.returncode != 0:
        raise EnvBuildError(f"`uv pip freeze --python {python}` failed: {out.stderr.strip().splitlines()[-1:]}")
    return sorted((parse_line(line) for line in out.stdout.splitlines() if line.strip() and not
                   line.startswith("#")), key=lambda f: f.name)


def parse_line(line: str) -> Frozen:
    """`name==version`, or `name @ git+URL@commit`, or another direct reference `name @ URL`."""
    line = line.strip()
    if match := _GIT.match(line):
        return Frozen(normalise(match["name"]), match["commit"], line, git_commit=match["commit"])
    if "==" in line:
        name, version = line.split("==", 1)
        return Frozen(normalise(name.strip()), version.strip(), line)
    name, _, url = line.partition(" @ ")
    return Frozen(normalise(name.strip()), url.strip(), line)


def index_flags(indexes: Indexes) -> list[str]:
    """The index/find-links options of the env's installs, for compile and install alike."""
    flags: list[str] = []
    if indexes.index_url:
        flags += ["--index-url", indexes.index_url]
    extras = list(indexes.extra_index_urls) + ([indexes.torch_index_url] if indexes.torch_index_url else [])
    for url in extras:
        flags += ["--extra-index-url", url]
    for link in indexes.find_links:
        flags += ["--find-links", link]
    if extras or indexes.find_links:
        flags += ["--index-strategy", "unsafe-best-match"]
    return flags


def hashes_for(frozen: list[Frozen], *, python: Path | str, indexes: Indexes,
               env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """sha256 of each frozen distribution's wheel(s), by name: uv's resolution of exactly this set with hashes,
    plus a hash of the matching wheel in a find-links folder where uv gives none (local wheels)."""
    pinned = [f for f in frozen if f.git_commit is None]
    with tempfile.TemporaryDirectory(prefix="modelrig-lock-") as tmp:
        reqs = Path(tmp) / "frozen.txt"
        reqs.write_text("".join(f"{f.requirement}\n" for f in pinned), encoding="utf-8")
        cmd = [uv_or_fail(), "pip", "compile", "--no-config", "--generate-hashes", "--no-deps", "--no-header",
               "--no-annotate", "--python", str(python), *index_flags(indexes), str(reqs)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=clean_environ(env), check=False)
        if out.returncode != 0:  # no index reachable: the hashes uv recorded in its cache are the same
            cached = subprocess.run([*cmd, "--offline"], capture_output=True, text=True, env=clean_environ(env),
                                    check=False)
            out = cached if cached.returncode == 0 else out
    if out.returncode != 0:
        last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), "no output")
        raise EnvBuildError(f"cannot hash the env's packages (`uv pip compile --generate-hashes`): {last.strip()}")
    hashes = parse_compiled(out.stdout)
    tags: set[Tag] | None = None
    for f in pinned:
        if not hashes.get(f.name):
            hashes[f.name] = local_wheel_hashes(f, indexes.find_links)
        if not hashes.get(f.name):
            tags = tags if tags is not None else env_tags(python)
            hashes[f.name] = served_wheel_hashes(f, link_pages(f.name, indexes), tags=tags)
    return hashes


def link_pages(name: str, indexes: Indexes) -> list[str]:
    """The pages that may link `name`'s wheels: each find-links URL itself, and each index's project page."""
    pages = [link for link in indexes.find_links if urlsplit(link).scheme in ("http", "https", "file")]
    for url in [indexes.index_url, *indexes.extra_index_urls, indexes.torch_index_url]:
        if url:
            pages.append(f"{url.rstrip('/')}/{normalise(name)}/")
    return pages


def env_tags(python: Path | str) -> set[Tag]:
    """The wheel tags the env's interpreter (CPython X.Y on this machine) installs."""
    interp = probe_python(str(python))
    if interp is None:
        raise EnvBuildError(f"{python}: does not run; cannot tell which wheels its packages came from")
    major, minor = (int(x) for x in interp.minor.split("."))
    platforms = list(platform_tags())
    return set(cpython_tags((major, minor), platforms=platforms)) | set(
        compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=platforms))


class _Links(HTMLParser):
    """The `href` of every anchor in a find-links or simple-index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [value for key, value in attrs if key == "href" and value]


def _open(url: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    return urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "text/html"}), timeout=timeout)


def served_wheel_hashes(frozen: Frozen, pages: list[str], *, tags: set[Tag]) -> list[str]:
    """sha256 of `frozen`'s wheels that the env's interpreter can install, linked from `pages` (find-links URLs and
    index project pages): the `#sha256=` a link carries, else the sha256 of the wheel downloaded from it.
    Unreachable pages are skipped."""
    try:
        wanted = Version(frozen.version)
    except InvalidVersion:
        return []
    found: set[str] = set()
    for page in pages:
        try:
            with _open(page) as response:
                base = response.geturl()
                html = response.read().decode("utf-8", errors="replace")
        except (OSError, urllib.error.URLError, ValueError):
            continue
        parser = _Links()
        parser.feed(html)
        for href in parser.hrefs:
            location, _, fragment = urljoin(base, href).partition("#")
            filename = unquote(urlsplit(location).path.rsplit("/", 1)[-1])
            try:
                name, version, _build, wheel_tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            if normalise(name) != frozen.name or version != wanted or not wheel_tags & tags:
                continue
            declared = fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else ""
            digest = declared if re.fullmatch(r"[0-9a-f]{64}", declared) else _hash_url(location)
            if digest:
                found.add(digest)
    return sorted(found)


def _hash_url(url: str) -> str | None:
    """sha256 of what `url` serves, streamed; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with _open(url, timeout=300) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return digest.hexdigest()


def parse_compiled(text: str) -> dict[str, list[str]]:
    """`{name: [sha256, ...]}` from `uv pip compile --generate-hashes` output."""
    hashes: dict[str, list[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            if current is not None:
                hashes[current].append(line.removeprefix("--hash=sha256:"))
            continue
        current = parse_line(line).name
        hashes.setdefault(current, [])
    return {name: sorted(set(values)) for name, values in hashes.items()}


def local_wheel_hashes(frozen: Frozen, find_links: list[str]) -> list[str]:
    """sha256 of each wheel named `<name>-<version>-*.whl` in the find-links folders."""
    found: list[str] = []
    for folder in find_links:
        path = Path(folder)
        if not path.is_dir():
            continue
        for wheel in sorted(path.glob("*.whl")):
            name, _, rest = wheel.name.partition("-")
            if normalise(name) == frozen.name and rest.split("-", 1)[0] == frozen.version:
                found.append(sha256_file(wheel))
    return sorted(set(found))


def hashed_requirements(packages: list[tuple[str, list[str]]]) -> str:
    """A requirements file for `--require-hashes`: each requirement with its `--hash` options."""
    lines = []
    for requirement, hashes in packages:
        lines.append(" \\\n    ".join([requirement, *(f"--hash=sha256:{h}" for h in hashes)]))
    return "\n".join(lines) + "\n"
