"""The smoke check that must pass before an env is stamped complete: torch and transformers import and report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from modelrig.envs.tools import clean_environ
from modelrig.errors import EnvBuildError

#: Runs inside the model env; prints one JSON line. Nothing from modelrig is importable there.
SMOKE_SCRIPT = """\
import json, sys
import torch
import transformers
mps = getattr(torch.backends, "mps", None)
print(json.dumps({
    "python": "%d.%d.%d" % sys.version_info[:3],
    "prefix": sys.prefix,
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_available": bool(torch.cuda.is_available()),
    "mps_available": bool(mps is not None and mps.is_available()),
    "transformers": transformers.__version__,
}))
"""


def smoke_check(python: Path, *, env_vars: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Import torch and transformers in the env; return what they report, or raise EnvBuildError."""
    try:
        out = subprocess.run([str(python), "-c", SMOKE_SCRIPT], capture_output=True, text=True, timeout=timeout,
                             env=clean_environ(env_vars), cwd=python.parent, check=False)
    except subprocess.TimeoutExpired:
        raise EnvBuildError(f"{python}: smoke check (import torch, transformers) timed out") from None
    if out.returncode != 0:
        last = next((line for line in reversed(out.stderr.splitlines()) if line.strip()), "no output")
        raise EnvBuildError(f"{python}: smoke check failed: {last.strip()}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EnvBuildError(f"{python}: smoke check printed no result") from None


def describe(smoke: dict[str, Any]) -> str:
    """`torch 2.13.0+cpu (cpu), transformers 4.37.0`"""
    accel = "cuda" if smoke.get("cuda_available") else "mps" if smoke.get("mps_available") else "cpu"
    return f"torch {smoke.get('torch')} ({accel}), transformers {smoke.get('transformers')}"
