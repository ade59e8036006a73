"""Progress bars for long work, switched off by `MODELRIG_NO_PROGRESS=1` (or HF_HUB_DISABLE_PROGRESS_BARS)."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    """False when progress output is switched off by the environment or stderr is not a terminal."""
    for var in ("MODELRIG_NO_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return False
    return sys.stderr.isatty() or os.environ.get("MODELRIG_FORCE_PROGRESS") == "1"


def bar(total: float | None, desc: str, *, unit: str = "B", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; byte units scale automatically."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        disable=not progress_enabled(),
        file=sys.stderr,
        leave=False,
        **kwargs,
    )
