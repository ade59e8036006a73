"""Run `modelrig ARGS` in a child that SIGKILLs itself at a chosen point of a conversion (interrupt tests)."""

from __future__ import annotations

import os
import subprocess
import sys

#: Runs `modelrig ARGS` and SIGKILLs itself at a chosen point: `bytes:N` (after N weight bytes written, mid-write),
#: `stamp` (every file written, stamp not yet), `rename` (stamped, not yet renamed into place).
KILLER = r"""
import os, signal, sys
from pathlib import Path
import modelrig.convert.shards as cio
import modelrig.convert.step as cstep
import modelrig.stamp as cstamp

point, args = sys.argv[1], sys.argv[2:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if point.startswith("bytes:"):
    limit = int(point.split(":")[1])
    written = [0]

    real_write_all, real_copy_span = cio.write_all, cio.copy_span

    def write_all(fd, data):
        view = memoryview(data).cast("B")
        room = limit - written[0]
        if len(view) >= room:
            real_write_all(fd, view[:room]); die()
        written[0] += len(view)
        real_write_all(fd, view)

    def copy_span(span, fd, *, scratch):
        room = limit - written[0]
        if span.nbytes >= room:
            real_copy_span(cio.FileSpan(span.path, span.offset, room), fd, scratch=scratch); die()
        written[0] += span.nbytes
        real_copy_span(span, fd, scratch=scratch)

    cio.write_all, cio.copy_span = write_all, copy_span
elif point == "stamp":
    cstep.write_stamp = lambda *a, **k: die()
elif point == "rename":
    real_replace = os.replace
    def replace(src, dst):
        if not Path(dst).name.startswith(".modelrig-tmp-") and Path(src).name.startswith(".modelrig-tmp-") \
                and Path(src).is_dir():
            die()
        return real_replace(src, dst)
    cstamp.os.replace = replace

from modelrig.cli import main
sys.exit(main(args))
"""


def killed(point: str, args: list[str]) -> int:
    """Run `modelrig ARGS` under KILLER at `point`; its exit code (-9 when it was killed there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLER, point, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode
