#!/usr/bin/env python3
"""Check a lock (and a bundle) on the controller before anything changes on a host.

Usage: check_lock.py VARIABLE LOCK_FILE SOURCE_DIR [BUNDLE_VARIABLE BUNDLE_FILE]

Validates LOCK_FILE with modelrig's own schema (`modelrig.lock.schema.load_lock`, imported from the toolkit's
source folder SOURCE_DIR/src, or from this Python when it has modelrig installed); where modelrig cannot be
imported, only the YAML, `schema: modelrig-lock/1` and `model` (the manifest id pattern: the role names files after
it) are checked (the host's engine checks the rest before it changes anything). A bundle must be an uncompressed
tar whose first member is a `bundle.json` of the same model (the host's engine checks every member). Prints
`{"model": ..., "path": ...}` as JSON, or one line `VARIABLE=FILE: field: message` and exits 1.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path

SCHEMA = "modelrig-lock/1"
#: The manifest id pattern (modelrig.lock.schema.MODEL_ID): a model id is one safe file name.
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: Leading bytes of compressed files: a bundle is an uncompressed tar.
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x5d\x00\x00")
MAX_INDEX_BYTES = 16 * 1024 * 1024


def check_lock(path: Path, source_dir: Path) -> str:
    """The lock's model id; raises ValueError with `FILE: field: message` when the lock is not valid."""
    sys.path.insert(0, str(source_dir / "src"))
    try:
        from modelrig.errors import LockError
        from modelrig.lock.schema import load_lock
    except ImportError:
        return _check_shape(path)
    try:
        model = load_lock(path).model
    except LockError as exc:
        raise ValueError(str(exc)) from None
    if not MODEL_ID.match(model):  # the engine's schema says the same; the role writes locks/<model>.lock.yaml
        raise ValueError(f"{path}: model: expected a model id as a manifest spells it, found {model!r}")
    return model


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
    if not isinstance(data.get("model"), str) or not MODEL_ID.match(data["model"]):
        raise ValueError(f"{path}: model: expected a model id as a manifest spells it (a-z, 0-9, '.', '_', '-', "
                         f"starting with a letter or digit), found {data.get('model')!r}")
    return str(data["model"])


def check_bundle(path: Path, model: str) -> None:
    """Raise ValueError unless `path` is a tar whose bundle.json is of `model`."""
    try:
        with path.open("rb") as head:
            if head.read(6).startswith(COMPRESSED):
                raise ValueError(f"{path}: compressed; a bundle is an uncompressed .tar as `modelrig bundle` "
                                 "writes it")
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != "bundle.json" or not first.isreg() or first.size > MAX_INDEX_BYTES:
                raise ValueError(f"{path}: bundle.json: missing (not a modelrig bundle)")
            member = tar.extractfile(first)
            meta = json.loads(member.read(first.size)) if member else None
    except FileNotFoundError:
        raise ValueError(f"{path}: bundle file not found") from None
    except (OSError, tarfile.TarError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a modelrig bundle: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: bundle.json: not JSON: {exc}") from None
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
