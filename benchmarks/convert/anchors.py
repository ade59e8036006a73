"""Prepare the delta-merge benchmark's public anchors: FastChat's and Fengshenbang's `apply_delta.py`, unmodified,
and a throwaway venv that runs them. Nothing here goes into the repository; `run.py --anchors-dir DIR` reads DIR.

    .venv/bin/python benchmarks/convert/anchors.py --fastchat-git GITDIR --fengshenbang-git GITDIR [--dir DIR]
    .venv/bin/python benchmarks/convert/anchors.py --fastchat FILE --fengshenbang FILE [--dir DIR]

Each script comes out of a clone or bare mirror of its repository at the pinned commit (`git show COMMIT:PATH`),
or is given as a file (say a download of its raw URL at that commit); either way its git blob id must equal the
one recorded below, so what runs is byte for byte the upstream file (a different file is refused, naming it).

The venv (uv, Python 3.11, under DIR/venv) gets torch 2.13.0 (the CPU build: pip's find-links folders from
PIP_FIND_LINKS, else PyTorch's CPU index), transformers 4.37.0 and what the scripts import (sentencepiece for the
slow LLaMA tokenizer they ask for, protobuf, accelerate for `low_cpu_mem_usage=True`, tqdm). transformers 4.37.0
is inside FastChat's own requirement (>= 4.31.0 at that commit) and Fengshenbang's (>= 4.17.0); both scripts run
with it as they are (4.29.2 runs them too, but keeps `rotary_emb.inv_freq` as a saved buffer, so FastChat's `+=`
doubles it when neither checkpoint stores it). DIR/anchors.json records the paths, commits, blob ids and the
venv's package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

#: transformers for the anchors' venv (see the module docstring for why this one).
TRANSFORMERS = "transformers==4.37.0"
TORCH = "torch==2.13.0"
EXTRA_REQUIREMENTS = ("sentencepiece", "protobuf", "accelerate", "tqdm")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Anchor:
    """One public script at a pinned commit, known by its git blob id."""

    key: str
    title: str
    repo: str
    commit: str
    path: str
    blob: str

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/blob/{self.commit}/{self.path}"


ANCHORS = {
    "fastchat": Anchor("fastchat", "FastChat", "lm-sys/FastChat", "0283a0bb971cecdc630e9dd647cd1d1b17cc09ee",
                       "fastchat/model/apply_delta.py", "ba1c06d48aa1125113f7a864ec26d5c9368a91f5"),
    "fengshenbang": Anchor("fengshenbang", "Fengshenbang-LM", "IDEA-CCNL/Fengshenbang-LM",
                           "dfe4f4ce7302e2ae5685f6bc49cf01bce5e5fdf2", "fengshen/utils/apply_delta.py",
                           "dcc46428b515ee7fd88e804b132d1c427b37f830"),
}


def default_dir() -> Path:
    """Where the anchors go unless told: $XDG_CACHE_HOME (or ~/.cache)/modelrig-bench/anchors."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelrig-bench" / "anchors"


def blob_id(data: bytes) -> str:
    """The git blob id of `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_bytes(anchor: Anchor, data: bytes, where: str) -> None:
    """Refuse (SystemExit naming `where`) bytes that are not the upstream script's."""
    got = blob_id(data)
    if got != anchor.blob:
        raise SystemExit(f"anchors: {where} is not {anchor.repo}'s {anchor.path} at {anchor.commit[:12]} "
                         f"(git blob {got}, expected {anchor.blob}); it must be run unmodified")


def check_unmodified(anchor: Anchor, file: Path) -> None:
    """Refuse (SystemExit naming the file) a script that is missing or not byte for byte the upstream one."""
    if not file.is_file():
        raise SystemExit(f"anchors: {anchor.title} script {file} does not exist")
    check_bytes(anchor, file.read_bytes(), str(file))


def from_git(anchor: Anchor, git_dir: Path) -> bytes:
    """The script's bytes at the pinned commit, from a clone (its work tree or .git) or a bare mirror."""
    proc = subprocess.run(["git", "-C", str(git_dir), "show", f"{anchor.commit}:{anchor.path}"],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"anchors: cannot read {anchor.path} at {anchor.commit[:12]} from {git_dir}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _uv() -> str:
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if not found:
        raise SystemExit("anchors: uv is needed to build the anchors' venv (pip install uv)")
    return found


def torch_requirement() -> str:
    """torch 2.13.0, pinned to the CPU build's local version on Linux x86_64 (so no CUDA wheels come along)."""
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        return TORCH + "+cpu"
    return TORCH


def build_venv(venv: Path, *, python: str = "3.11") -> dict[str, str]:
    """Create (or refresh) the venv and install what the anchors import; returns {package: version}."""
    uv = _uv()
    subprocess.run([uv, "venv", "-q", "--allow-existing", "-p", python, str(venv)], check=True)
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    sources = [a for link in links for a in ("--find-links", link)] or ["--extra-index-url", CPU_INDEX]
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *sources,
                    "--index-strategy", "unsafe-best-match", torch_requirement(), TRANSFORMERS,
                    *EXTRA_REQUIREMENTS], check=True)
    freeze = subprocess.run([uv, "pip", "freeze", "--python", str(venv / "bin" / "python")], capture_output=True,
                            text=True, check=True).stdout
    return dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)


def prepare(out: Path, scripts: dict[str, tuple[bytes, str]]) -> dict:
    """Write the scripts (each given as its bytes and where they came from, checked first) and the venv under
    `out`, and out/anchors.json describing them."""
    for key, (data, where) in scripts.items():
        check_bytes(ANCHORS[key], data, where)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"anchors": {}}
    for key, (data, _) in scripts.items():
        anchor = ANCHORS[key]
        file = out / key / "apply_delta.py"
        file.parent.mkdir(exist_ok=True)
        file.write_bytes(data)
        record["anchors"][key] = {**asdict(anchor), "file": str(file), "url": anchor.url}
    packages = build_venv(out / "venv")
    record["python"] = str(out / "venv" / "bin" / "python")
    record["packages"] = {k: packages[k] for k in sorted(packages)}
    (out / "anchors.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=default_dir(), help="where the scripts and the venv go")
    for key, anchor in ANCHORS.items():
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument(f"--{key}-git", type=Path, metavar="GITDIR",
                           help=f"a clone or bare mirror of {anchor.repo} (read at {anchor.commit[:12]})")
        group.add_argument(f"--{key}", type=Path, metavar="FILE", help=f"{anchor.path} at {anchor.commit[:12]}")
    args = parser.parse_args()
    scripts = {}
    for key, anchor in ANCHORS.items():
        git_dir, file = getattr(args, f"{key}_git"), getattr(args, key)
        if file is not None and not file.is_file():
            raise SystemExit(f"anchors: --{key} {file}: no such file")
        scripts[key] = ((from_git(anchor, git_dir), f"{anchor.path} at {anchor.commit[:12]} in {git_dir}") if git_dir
                        else (file.read_bytes(), str(file)))
    record = prepare(args.dir, scripts)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
