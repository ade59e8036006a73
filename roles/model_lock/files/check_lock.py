#!/usr/bin/env python3
"""Check a lock (and a bundle) on the controller before anything changes on a host.

Usage: check_lock.py VARIABLE LOCK_FILE SOURCE_DIR [BUNDLE_VARIABLE BUNDLE_FILE]

Validates LOCK_FILE with modelrig's own schema (`modelrig.lock.schema.load_lock`, imported from the toolkit's
source folder SOURCE_DIR/src, or from this Python when it has modelrig installed); where modelrig cannot be
imported, only the YAML, `schema: modelrig-lock/1` and `model` are checked (the host's engine checks the rest
before it changes anything). A bundle must be a tar holding a `bundle.json` of the same model. Prints
`{"model": ..., "path": ...}` as JSON, or one line `VARIABLE=FILE: field: message` and exits 1.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

SCHEMA = "modelrig-lock/1"


def check_lock(path: Path, source_dir: Path) -> str:
    """The lock's model id; raises ValueError with `FILE: field: message` when the lock is not valid."""
    sys.path.insert(0, str(source_dir / "src"))
    try:
        from modelrig.errors import LockError
        from modelrig.lock.schema import load_lock
    except ImportError:
        return _check_shape(path)
    try:
        return load_lock(path).model
    except LockError as exc:
        raise ValueError(str(exc)) from None


def _check_shape(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: lock file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise ValueError(f"{path}: schema: expected {SCHEMA!r}, found {found!r}")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise ValueError(f"{path}: model: expected a model id")
    return str(data["model"])


def check_bundle(path: Path, model: str) -> None:
    """Raise ValueError unless `path` is a tar whose bundle.json is of `model`."""
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("bundle.json")
            meta = json.loads(member.read()) if member else None
    except FileNotFoundError:
        raise ValueError(f"{path}: bundle file not found") from None
    except KeyError:
        raise ValueError(f"{path}: bundle.json: missing (not a modelrig bundle)") from None
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise ValueError(f"{path}: not a modelrig bundle: {exc}") from None
    if not isinstance(meta, dict) or meta.get("model") != model:
        found = meta.get("model") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: bundle.json: model: expected {model!r} (the lock's), found {found!r}")


def _line(exc: Exception) -> str:
    """The message on one line (tar and YAML errors can span several)."""
    return " ".join(str(exc).split())


def main(argv: list[str]) -> int:
    variable, lock, source_dir = argv[0], Path(argv[1]), Path(argv[2])
    try:
        model = check_lock(lock, source_dir)
    except ValueError as exc:
        print(f"{variable}={_line(exc)}")
        return 1
    if len(argv) > 4 and argv[4]:
        try:
            check_bundle(Path(argv[4]), model)
        except ValueError as exc:
            print(f"{argv[3]}={_line(exc)}")
            return 1
    print(json.dumps({"model": model, "path": str(lock)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
