"""`scripts/gpu-check.sh --pack DIR`: everything the GPU check needs on a machine with no network, into DIR.

Run with the toolkit env's Python on a machine that reaches a package index. DIR gets

* the modelrig wheel (`uv build` of this checkout) and pip's own wheel (the check runs pip from it);
* for each target Python (`--python-version`, default 3.10 3.11 3.12) the wheels of the toolkit's dependencies and
  of the tiny demo's API env (`demo-tiny-ziya` without Gradio), resolved by `uv pip compile` for x86_64
  manylinux_2_28 with torch and what only torch needs left out: the GPU machine's own CUDA torch stands in for
  it; `toolkit-<X.Y>.txt` and `demo-<X.Y>.txt` pin what was resolved;
* `hub/`: the demo's two tiny repos (`modelrig hub make-tiny`), so the check serves them on loopback;
* `pack.json`: what was packed, for which Pythons, and the answer the demo model was trained to give.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PLATFORM = "manylinux_2_28_x86_64"
#: pip download takes each accepted platform tag by name: manylinux_2_28 and every older glibc's.
PLATFORM_TAGS = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
DEFAULT_PYTHONS = ("3.10", "3.11", "3.12")
DEMO = "demo-tiny-ziya"
#: The demo's API entry needs no UI: its packages less these.
DEMO_UI_ONLY = ("gradio",)
#: The machine's own CUDA torch stands in for these (and for what only they need).
MACHINE_PROVIDES = ("torch",)
TINY_REPOS = ("modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta")


class PackError(Exception):
    """A step of the pack failed; the message names it."""


def _run(cmd: list[str], what: str, **kwargs: object) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if out.returncode != 0:
        last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), "no output")
        raise PackError(f"{what} failed: {last.strip()}")
    return str(out.stdout)


def without_machine_packages(compiled: str, provided: tuple[str, ...] = MACHINE_PROVIDES) -> list[str]:
    """The `name==version` pins of a `uv pip compile` output (with its `# via` annotations) less `provided` and
    every package that only they need, transitively."""
    pins: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    current = ""
    for line in compiled.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if pin:
            current = pin[1].lower().replace("_", "-")
            pins[current], parents[current] = pin[2], set()
            continue
        via = re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*$", line)
        if via and current and via[1] != "via":
            parents[current].add(via[1].lower().replace("_", "-"))
        elif re.match(r"^\s+#\s+via -r ", line) or re.match(r"^\s+#\s+-r ", line):
            parents.setdefault(current, set()).add("-r")
    dropped = {p.lower() for p in provided}
    changed = True
    while changed:
        changed = False
        for name, of in parents.items():
            if name not in dropped and of and of <= dropped:
                dropped.add(name)
                changed = True
    return [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in dropped]


def _compile(requirements: list[str], python: str, uv: str, constraints: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(requirements) + "\n")
        cmd = [uv, "pip", "compile", str(src), "--python-version", python, "--python-platform",
               "x86_64-manylinux_2_28", "--no-header", "--annotation-style", "split", "--quiet"]
        if constraints:
            (Path(tmp) / "constraints.txt").write_text("\n".join(constraints) + "\n")
            cmd += ["--constraint", str(Path(tmp) / "constraints.txt")]
        compiled = _run(cmd, f"uv pip compile for Python {python}", env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    return without_machine_packages(compiled)


def _download(pins: list[str], python: str, dest: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
          "--python-version", python, *(f"--platform={tag}" for tag in PLATFORM_TAGS), "-d", str(dest), *pins],
         f"pip download of the wheels for Python {python}")


def toolkit_requirements() -> list[str]:
    """The toolkit's declared dependencies (pyproject.toml) plus uv, which the toolkit runs."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    if block is None:
        raise PackError("pyproject.toml: no [project] dependencies list")
    return [*re.findall(r'^\s*"([^"]+)"', block[1], re.MULTILINE), "uv"]


def demo_requirements() -> list[str]:
    """The tiny demo's packages less the UI-only ones, plus torch (resolved, then left to the machine)."""
    manifest = yaml.safe_load((REPO / "model_manifests" / f"{DEMO}.yaml").read_text())
    packages = [p for p in manifest["env"]["packages"] if not p.startswith(DEMO_UI_ONLY)]
    return [*packages, f"torch{manifest['env']['torch']}"]


def pack(dest: Path, pythons: list[str]) -> dict[str, object]:
    """Fill `dest` (see the module docstring); returns what pack.json records."""
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    uv = str(bindir / "uv")
    for old in dest.glob("modelrig-*.whl"):
        old.unlink()
    _run([uv, "build", "--wheel", "--out-dir", str(dest), str(REPO)], "uv build of the modelrig wheel")
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
          "-d", str(dest), "pip"], "pip download of pip")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    installed = _run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"], "pip freeze")
    # the Python of this toolkit env gets the versions tested here; others what resolves for them
    tested = [line for line in installed.splitlines() if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^+]*$", line)
              and line.split("==")[0].lower() not in MACHINE_PROVIDES]
    for python in pythons:
        toolkit = _compile(toolkit_requirements(), python, uv, tested if python == here else [])
        demo = _compile(demo_requirements(), python, uv, [])
        (dest / f"toolkit-{python}.txt").write_text("\n".join(toolkit) + "\n")
        (dest / f"demo-{python}.txt").write_text("\n".join(demo) + "\n")
        _download(toolkit, python, dest)
        _download(demo, python, dest)
    hub = dest / "hub"
    if not (hub / ".modelrig-hub-tokens").is_file():
        only = [arg for repo in TINY_REPOS for arg in ("--only", repo)]
        _run([str(bindir / "modelrig"), "hub", "make-tiny", str(hub), *only], "modelrig hub make-tiny")
    from modelrig.orchestrate.demo import ANSWER, PROMPT

    wheel = next(dest.glob("modelrig-*.whl")).name
    record = {"modelrig_wheel": wheel, "pythons": pythons, "platform": PLATFORM, "demo": DEMO, "prompt": PROMPT,
              "answer": ANSWER, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "seconds": round(time.monotonic() - started, 1),
              "bytes": sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())}
    (dest / "pack.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check.sh --pack", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to fill (carried to the GPU machine)")
    parser.add_argument("--python-version", action="append", dest="pythons", metavar="X.Y",
                        help=f"a Python of the GPU machine (repeatable; default {' '.join(DEFAULT_PYTHONS)})")
    args = parser.parse_args(argv)
    pythons = args.pythons or list(DEFAULT_PYTHONS)
    for python in pythons:
        if not re.fullmatch(r"3\.\d+", python):
            print(f"gpu-check --pack: --python-version {python!r} is not X.Y (e.g. 3.11)", file=sys.stderr)
            return 2
    try:
        record = pack(args.dir, pythons)
    except PackError as exc:
        print(f"gpu-check --pack: {exc}", file=sys.stderr)
        return 1
    print(f"gpu-check --pack: {args.dir} ready for Python {' '.join(pythons)} ({record['bytes'] / 2**20:.0f} MiB, "
          f"{record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
