"""Run commands in a network namespace with loopback only (`unshare -n`), proving they need no network."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest


def unshare_available() -> bool:
    """True when this process may create a network namespace (root, util-linux, iproute2)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def offline(cmd: Sequence[str]) -> list[str]:
    """Wrap `cmd` so it runs with only a loopback interface; fails the test where that is impossible."""
    if not unshare_available():
        pytest.fail("unshare -n is needed to prove this test is offline (run as root with util-linux and iproute2)")
    return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *cmd]
