"""Byte counts for people: the one way they are shown (decimal units: kB, MB, GB, TB; 1 GB = 10**9 bytes) and the
one way sizes people write are read (`5GB`, `500MB`, `512MiB`).

Decimal, because the manifests and the planner state memory and sizes in GB (`memory_gb`, `size_gb`, a model's
parameters times bytes per parameter), disk vendors and cloud consoles sell GB, and `--json` results carry exact
byte counts anyway. So `facts`, `plan`, `fetch` and `doctor` print the same quantity the same way
(`disk_free_bytes=25_213_000_000` is `25.2 GB` everywhere). A machine's memory (RAM, unified memory, a GPU's
memory) is the one exception: it is built and sold in binary sizes, so `format_memory` shows it in GiB (a "16 GB"
Mac is 16 GiB, not 17.2 GB); what a model needs stays in GB.
"""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_size(n_bytes: float | None, *, unknown: str = "unknown") -> str:
    """`1536` -> `"1.5 kB"`, `25_213_000_000` -> `"25.2 GB"`, `117e9` -> `"117 GB"`, `None` -> `unknown`.

    Three significant figures at most: one decimal below 100 of a unit (a trailing `.0` dropped), none above;
    whole bytes below 1 kB; negative counts keep their sign.
    """
    return unknown if n_bytes is None else _scaled(float(n_bytes), _UNITS, 1000)


def format_memory(n_bytes: float | None, *, unknown: str = "unknown") -> str:
    """A memory size in binary units, as RAM is built and sold: `17_179_869_184` -> `"16 GiB"`, `206_158_430_208`
    -> `"192 GiB"`, `16_700_000_000` -> `"15.6 GiB"` (what Apple and `free` call 16 GB is 16 GiB)."""
    return unknown if n_bytes is None else _scaled(float(n_bytes), _BINARY_UNITS, 1024)


def _scaled(value: float, units: tuple[str, ...], base: int) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in units:
        if round(value, 1) < base or unit == units[-1]:  # 999.96 kB reads "1 MB", not "1000 kB"
            break
        value /= base
    if unit == "B":
        return f"{sign}{value:.0f} B"
    text = f"{value:.1f}" if round(value, 1) < 100 else f"{value:.0f}"
    return f"{sign}{text.removesuffix('.0')} {unit}"


_PARSE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
                "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "PIB": 1 << 50}


def parse_size(text: int | str) -> int:
    """`"5GB"` -> 5_000_000_000, `"512MiB"` -> 536_870_912, `"0"` -> 0; ints pass through.

    Decimal units as huggingface_hub and the Hub count them (`5GB` shards), binary ones when written as such.
    Raises ValueError for anything else (the caller names the option or field).
    """
    if isinstance(text, int):
        return text
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGTPIB")
    unit = value[len(number):]
    try:
        count = float(number) * _PARSE_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {text!r} (expected e.g. 500MB, 5GB or 512MiB)") from None
    if count < 0 or count != count:
        raise ValueError(f"not a size: {text!r} (expected e.g. 500MB, 5GB or 512MiB)")
    return int(count)
