"""What a host's weight store holds while a download runs (the Ansible interrupt tests): complete weight files,
huggingface_hub's partial ones, and how often a hub's access log served a file."""

from __future__ import annotations

from pathlib import Path

#: Suffixes of the demo model's weight files.
WEIGHTS = (".bin", ".pth")


def weight_files(store: Path) -> dict[str, tuple[int, int, int]]:
    """Complete weight files in the store (renamed into place): {repo/file: (inode, mtime_ns, size)}."""
    found = {}
    for path in store.rglob("*"):
        if path.suffix in WEIGHTS and ".cache" not in path.parts and path.is_file():
            stat = path.stat()
            found[f"{path.parent.name}/{path.name}"] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return found


def partial_files(store: Path) -> list[Path]:
    """Downloads in progress: huggingface_hub's temporary `.incomplete` files."""
    return [p for p in store.rglob("*.incomplete") if p.is_file()] if store.is_dir() else []


def gets(log: str, name: str) -> int:
    """How many GET requests of a file named `name` the hub's access log holds."""
    return sum(1 for line in log.splitlines() if '"GET ' in line and f"/{name} " in line)
