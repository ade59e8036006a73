"""Writing a benchmark's table into its own section of BENCHMARKS.md, leaving the other sections alone."""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(section: str, table: str, *, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section headed `section` (a `## ...` line that `table` starts with), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    table = table.rstrip("\n") + "\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: table + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + table
    path.write_text(text, encoding="utf-8")


def publish(section: str, table: str, *, write: bool = True) -> None:
    """Print a benchmark's table and, with `write`, put it in its section of BENCHMARKS.md."""
    print(table)
    if write:
        write_section(section, table)


def median_wall(cmd: list[str], *, runs: int = 5, check: bool = True) -> float:
    """The median wall time in seconds of running `cmd` `runs` times (output discarded)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=check)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
