"""Finding a lock's relative paths on disk without leaving the folder they are listed under (links included)."""

from __future__ import annotations

from pathlib import Path


def inside(folder: Path, rel: str) -> Path | None:
    """`folder / rel` when it resolves (symbolic links followed) to a path inside `folder`, else None.

    The lock schema already refuses absolute and `..` paths; this catches a link on the host (or planted in a
    store folder) that points elsewhere, so nothing outside the folder is read, hashed, linked or packed.
    """
    base = folder.resolve()
    target = (folder / rel).resolve()
    return folder / rel if base in target.parents else None
