"""Pure parsers for macOS hardware reports: `system_profiler SPHardwareDataType`, `sysctl` and `sw_vers`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
#: macOS 12.3 is the first release where PyTorch's MPS backend works.
MPS_MIN_MACOS = (12, 3)


@dataclass(frozen=True)
class MacHardware:
    """The "Hardware Overview" of `system_profiler SPHardwareDataType`."""

    model_name: str | None
    model_identifier: str | None
    #: "Apple M2 Pro" on Apple Silicon; None on Intel Macs (they have a "Processor Name" instead).
    chip: str | None
    #: "Quad-Core Intel Core i7" on Intel Macs.
    processor: str | None
    cores: int | None
    #: Core kinds as printed, lower-cased: {"performance": 8, "efficiency": 2} or {"super": 4, "efficiency": 6}.
    core_kinds: dict[str, int]
    #: Installed (on Apple Silicon: unified) memory in bytes; macOS's "16 GB" means 16 GiB.
    memory_bytes: int | None


@dataclass(frozen=True)
class SysctlInfo:
    """What `sysctl machdep.cpu hw.memsize hw.ncpu ...` says."""

    values: dict[str, str]

    @property
    def brand(self) -> str | None:
        """`machdep.cpu.brand_string`: "Apple M1", or the generic "Apple processor" on macOS 11.0."""
        return self.values.get("machdep.cpu.brand_string")

    @property
    def apple_chip(self) -> str | None:
        """The chip name when the brand string names one ("Apple M1"), else None ("Apple processor", Intel)."""
        brand = self.brand
        return brand if brand and re.match(r"Apple M\d", brand) else None

    @property
    def memsize(self) -> int | None:
        """`hw.memsize` in bytes."""
        value = self.values.get("hw.memsize")
        return int(value) if value and value.isdigit() else None

    @property
    def cpu_count(self) -> int | None:
        """`hw.ncpu`, else `machdep.cpu.thread_count` / `core_count`."""
        for key in ("hw.ncpu", "machdep.cpu.thread_count", "machdep.cpu.core_count"):
            value = self.values.get(key)
            if value and value.isdigit():
                return int(value)
        return None

    @property
    def translated(self) -> bool:
        """True when the reporting process ran under Rosetta 2 (x86 keys beside an Apple brand, or
        `sysctl.proc_translated: 1`): the host is Apple Silicon but this process sees an Intel CPU."""
        if self.values.get("sysctl.proc_translated") == "1":
            return True
        return bool(self.apple_chip) and "machdep.cpu.family" in self.values


def _size_bytes(text: str) -> int | None:
    match = re.match(r"\s*([\d.]+)\s*([KMGT]B)\b", text, re.IGNORECASE)
    if not match:
        return None
    return int(float(match[1]) * _UNITS[match[2].lower()])


def parse_system_profiler(text: str) -> MacHardware:
    """Parse `system_profiler SPHardwareDataType` (any indentation, "Key: value" with spaces or a tab).

    Shell prompts and the "Hardware:" headings are ignored; missing keys give None.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and value.strip():
            values.setdefault(key.strip(), value.strip())
    cores_text = values.get("Total Number of Cores", "")
    cores_match = re.match(r"(\d+)", cores_text)
    kinds = {kind.lower(): int(n) for n, kind in re.findall(r"(\d+)\s+([A-Za-z]+)", cores_text.partition("(")[2])}
    memory = values.get("Memory")
    return MacHardware(
        model_name=values.get("Model Name"),
        model_identifier=values.get("Model Identifier"),
        chip=values.get("Chip"),
        processor=values.get("Processor Name"),
        cores=int(cores_match[1]) if cores_match else None,
        core_kinds=kinds,
        memory_bytes=_size_bytes(memory) if memory else None,
    )


def parse_sysctl(text: str) -> SysctlInfo:
    """Parse `sysctl` output ("key: value" or "key = value" lines; prompts and cut-off lines are skipped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z][\w.]*)\s*[:=]\s*(.*)$", line.strip())
        if match:
            values[match[1]] = match[2].strip()
    return SysctlInfo(values=values)


def parse_sw_vers(text: str) -> str | None:
    """`sw_vers` -> its "ProductVersion" ("14.6.1"); a bare version line (`sw_vers -productVersion`) also works."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "ProductVersion":
            return value.strip()
    stripped = text.strip()
    return stripped if re.fullmatch(r"\d+(\.\d+)*", stripped) else None


def mps_supported(macos_version: str | None, *, arch: str) -> bool | None:
    """Whether PyTorch's MPS backend can work: Apple Silicon (arm64) and macOS >= 12.3; None if the version is
    unknown on arm64."""
    if arch not in ("arm64", "aarch64"):
        return False
    if not macos_version:
        return None
    parts = tuple(int(p) for p in re.findall(r"\d+", macos_version)[:2])
    return parts >= MPS_MIN_MACOS
