"""The one way byte counts are shown to people: decimal units (kB, MB, GB, TB; 1 GB = 10**9 bytes).

Decimal, because the manifests and the planner state memory and sizes in GB (`memory_gb`, `size_gb`, a model's
parameters times bytes per parameter), disk vendors and cloud consoles sell GB, and `--json` results carry exact
byte counts anyway. So `facts`, `plan`, `fetch` and `doctor` print the same quantity the same way
(`ram_bytes=25_213_000_000` is `25.2 GB` everywhere).
"""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_size(n_bytes: float | None, *, unknown: str = "unknown") -> str:
    """`1536` -> `"1.5 kB"`, `25_213_000_000` -> `"25.2 GB"`, `117e9` -> `"117 GB"`, `None` -> `unknown`.

    Three significant figures at most: one decimal below 100 of a unit (a trailing `.0` dropped), none above;
    whole bytes below 1 kB; negative counts keep their sign.
    """
    if n_bytes is None:
        return unknown
    value = float(n_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in _UNITS:
        if value < 1000 or unit == _UNITS[-1]:
            break
        value /= 1000
    if unit == "B":
        return f"{sign}{value:.0f} B"
    text = f"{value:.1f}" if round(value, 1) < 100 else f"{value:.0f}"
    return f"{sign}{text.removesuffix('.0')} {unit}"
