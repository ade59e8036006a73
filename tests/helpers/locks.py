"""Small locks and bundles built by hand, for the schema and bundle tests: a valid lock to mutate, and a bundle of a
lock whose members a test can change, drop or add to (links, devices, bombs) before writing the tar itself."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import yaml

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64
MODEL = "trust-tiny"
COMMIT = "1" * 40
STORE = "store/huggingface/org--tiny"
STAMP = ".modelrig-stamp.json"


def sample() -> dict:
    """A small valid lock, lists deliberately out of order."""
    return {
        "schema": "modelrig-lock/1", "model": "demo-tiny-ziya", "manifest_sha256": H1, "modelrig": "0.1.0",
        "platform": {"os": "linux", "arch": "x86_64", "accelerator": "cpu", "torch": "2.13.0+cpu",
                     "torch_variant": "cpu"},
        "env": {"key": "616532b6b4949854", "python": "3.11.7", "backend": "venv", "find_links": ["/opt/wheels"],
                "packages": [{"name": "tqdm", "version": "4.70.1", "requirement": "tqdm==4.70.1", "hashes": [H2]},
                             {"name": "accelerate", "version": "1.15.0", "requirement": "accelerate==1.15.0",
                              "hashes": [H1, H3]}]},
        "sources": [{"name": "delta", "hub": "huggingface", "repo": "o/d", "revision": "main", "commit": "1" * 40,
                     "files": [{"path": "z.bin", "size": 3, "sha256": H1}, {"path": "a.json", "size": 2,
                                                                           "sha256": H2}]},
                    {"name": "base", "hub": "huggingface", "repo": "o/b", "revision": "main", "commit": "2" * 40,
                     "files": [{"path": "m.py", "size": 1, "sha256": H3}]}],
        "conversions": [{"output": "final", "kind": "safetensors", "key": "k", "params": {"steps": []},
                         "files": [{"path": "model.safetensors", "size": 9, "sha256": H2}]}],
        "launch": [{"entry": "api", "path": "start.sh", "sha256": H1}, {"entry": "api", "path": "app.py",
                                                                         "sha256": H2}],
        "remote_code": [{"source": "base", "path": "m.py", "sha256": H3}],
    }


def write_lock(path: Path, data: dict) -> Path:
    """`data` as a lock file at `path`."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_bundle(folder: Path) -> tuple[Path, dict[str, bytes]]:
    """A lock of model `trust-tiny` (one source, two weight files, one wheel) written in `folder`, and the members
    (name: bytes, in tar order after bundle.json) of a valid bundle of it."""
    weights = {"config.json": b'{"hidden_size": 8}\n', "model.safetensors": bytes(range(256)) * 4}
    manifest, wheel = f"id: {MODEL}\n".encode(), b"PK\x03\x04 a tiny wheel"
    files = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in sorted(weights.items())]
    stamp = json.dumps({"hub": "huggingface", "repo": "org/tiny", "revision": "main", "commit": COMMIT,
                        "files": files}).encode()
    lock = {**sample(), "model": MODEL, "manifest_sha256": sha(manifest), "conversions": [], "launch": [],
            "remote_code": []}
    lock["env"] = {**lock["env"], "packages": [{"name": "tqdm", "version": "4.70.1", "requirement": "tqdm==4.70.1",
                                                "hashes": [sha(wheel)]}]}
    lock["sources"] = [{"name": "base", "hub": "huggingface", "repo": "org/tiny", "revision": "main",
                        "commit": COMMIT, "files": files}]
    path = write_lock(folder / f"{MODEL}.lock.yaml", lock)
    members = {"lock.yaml": path.read_bytes(), f"manifests/{MODEL}.yaml": manifest,
               "wheels/tqdm-4.70.1-py3-none-any.whl": wheel,
               **{f"{STORE}/{p}": d for p, d in weights.items()}, f"{STORE}/{STAMP}": stamp}
    return path, members


def index_of(members: dict[str, bytes], model: str = MODEL) -> bytes:
    """The bundle.json `modelrig bundle` writes for `members`."""
    return json.dumps({"schema": "modelrig-bundle/2", "model": model,
                       "members": {n: sha(d) for n, d in members.items()},
                       "sizes": {n: len(d) for n, d in members.items()}}).encode()


def entry(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, link: str = "",
          size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    """One tar member: a regular file with `data`, or another `kind` (link target `link`)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    if data is not None:
        info.size = len(data) if size is None else size
    return info, data


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], *, mode: str = "w") -> Path:
    """The members in order, as a tar at `path` (`mode` "w:xz" and the like for a compressed one)."""
    with tarfile.open(path, mode) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def bundle_entries(members: dict[str, bytes], index: bytes | None = None) -> list[tuple[tarfile.TarInfo,
                                                                                         bytes | None]]:
    """bundle.json (`index`, by default the true one) first, then each member."""
    return [entry("bundle.json", index_of(members) if index is None else index),
            *(entry(n, d) for n, d in members.items())]
