"""The output folder `modelrig render` owns: render writes and removes files only in a folder it made."""

from __future__ import annotations

from pathlib import Path

from modelrig.errors import LaunchError
from modelrig.stamp import atomic_write_text, read_stamp

#: Written into an output folder render made (new or empty): render writes and removes files only in such folders.
OUT_MARKER = ".modelrig-render"
#: The description of each entry folder render writes.
ENTRY_FILE = "entry.json"


def claim_out_dir(out_dir: Path, *, check: bool) -> None:
    """Make sure `out_dir` is render's before anything in it is written or removed: a folder with `OUT_MARKER`,
    a new or empty one, or one holding only rendered entry folders (each with its stamp and `ENTRY_FILE`, as render
    left them before the marker existed). The marker is written unless `check`. Any other folder (or a file) is
    refused in one line naming it, untouched."""
    if (out_dir / OUT_MARKER).is_file():
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise LaunchError(f"{out_dir}: render's output folder is a file; give another --out", code="out_not_ours",
                          path=str(out_dir))
    children = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    foreign = [c.name for c in children
               if not (c.is_dir() and not c.is_symlink() and read_stamp(c) is not None and (c / ENTRY_FILE).is_file())]
    if foreign:
        raise LaunchError(f"{out_dir}: this folder holds files that modelrig render did not write ({foreign[0]}, no "
                          f"{OUT_MARKER}); render would overwrite them, so it stops: give another --out or an empty "
                          "folder", code="out_not_ours", path=str(out_dir))
    if not check:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / OUT_MARKER, "This folder is written by `modelrig render`: its files are "
                          "rewritten or removed when they differ from their rendering.\n", mode=0o644)
