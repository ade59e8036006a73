"""Known NVIDIA GPU names -> compute capability (data/gpus.yaml), with prefix matching for cut-off names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

GPUS_YAML = Path(__file__).resolve().parent.parent / "data" / "gpus.yaml"
_VENDOR_WORDS = ("nvidia ", "tesla ", "geforce ", "quadro ")


@dataclass(frozen=True)
class CapabilityLookup:
    """The answer for one GPU name."""

    #: "8.6", or None when the name is unknown or a cut-off name fits GPUs with different capabilities.
    capability: str | None
    #: "exact": the name is in the table; "prefix": the name was cut off (or has a suffix such as "Laptop GPU")
    #: and every table entry it can stand for has this capability; "none": no answer.
    match: str
    #: The table names the GPU name can stand for.
    candidates: tuple[str, ...] = ()

    @property
    def note(self) -> str | None:
        """A one-line explanation when the answer is not an exact match."""
        if self.match == "exact":
            return None
        if self.capability:
            return f"compute capability {self.capability} inferred from a partial name match " \
                   f"({', '.join(self.candidates)})"
        if self.candidates:
            caps = ", ".join(f"{name} ({cap})" for name, cap in _with_caps(self.candidates))
            return f"compute capability unknown: the name fits GPUs with different capabilities: {caps}"
        return "compute capability unknown: GPU name not in modelrig's table (data/gpus.yaml)"


def normalize(name: str) -> str:
    """Lower-case, single spaces, no trailing "...", no leading vendor words ("NVIDIA", "Tesla", "GeForce")."""
    text = re.sub(r"\s+", " ", name.strip().rstrip(".").strip().lower())
    changed = True
    while changed:
        changed = False
        for word in _VENDOR_WORDS:
            if text.startswith(word):
                text, changed = text[len(word):], True
    return text


@lru_cache(maxsize=1)
def known_gpus() -> dict[str, str]:
    """Every table name (as printed by nvidia-smi) -> compute capability."""
    data = yaml.safe_load(GPUS_YAML.read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    for by_capability in data.values():
        for capability, names in by_capability.items():
            for name in names:
                table[name] = str(capability)
    return table


def _with_caps(names: tuple[str, ...]) -> list[tuple[str, str]]:
    table = known_gpus()
    return [(name, table[name]) for name in names]


def lookup_capability(name: str) -> CapabilityLookup:
    """Find the compute capability for a GPU name as nvidia-smi printed it.

    A full name must match a table entry (ignoring case, spaces and vendor words). A name cut short by nvidia-smi
    ("NVIDIA GeForce RTX 4080 ...", "Tesla V100-SXM2...") matches every entry starting with it, and gives an answer
    only when all of them agree. A full name that extends a table entry ("... Laptop GPU") takes the longest such
    entry, as a "prefix" match.
    """
    table = known_gpus()
    wanted = normalize(name)
    if not wanted:
        return CapabilityLookup(None, "none")
    by_norm: dict[str, list[str]] = {}
    for entry in table:
        by_norm.setdefault(normalize(entry), []).append(entry)
    if wanted in by_norm and not name.rstrip().endswith("..."):
        entry = by_norm[wanted][0]
        return CapabilityLookup(table[entry], "exact", (entry,))
    if name.rstrip().endswith("..."):
        candidates = tuple(e for norm, entries in by_norm.items() if norm.startswith(wanted) for e in entries)
    else:
        longer = [norm for norm in by_norm if wanted.startswith(norm + " ") or wanted.startswith(norm + "-")]
        candidates = tuple(by_norm[max(longer, key=len)]) if longer else ()
    caps = {table[c] for c in candidates}
    if len(caps) == 1:
        return CapabilityLookup(caps.pop(), "prefix", candidates)
    return CapabilityLookup(None, "none", candidates)
