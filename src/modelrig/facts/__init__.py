"""Host facts: what this machine has (OS, CPU, RAM, disk, NVIDIA GPUs and driver, Apple chip and MPS)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelrig.errors import UsageError


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it."""

    index: int
    name: str
    memory_mib: int
    #: "8.6" for an RTX 3090; None when the output did not say (the old table has no compute capability).
    compute_capability: str | None = None
    uuid: str | None = None
    mig: bool = False
    #: True when nvidia-smi cut the name short ("NVIDIA GeForce RTX 4080 ...") and no full name was found.
    name_truncated: bool = False
    #: Where compute_capability came from: "nvidia-smi" (the compute_cap query), "table" (an exact name in
    #: data/gpus.yaml), "table-prefix" (a partial name all of whose matches agree), or None when unknown.
    capability_source: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """Everything the planner needs to know about a host. JSON form: `modelrig facts --json`."""

    os: str  # "linux" | "darwin" | "windows" | other `platform.system().lower()`
    arch: str  # "x86_64" | "arm64" | "aarch64"
    cpu: str
    cpu_count: int
    ram_bytes: int
    #: Free bytes on the filesystem of the data root.
    disk_free_bytes: int
    data_root: str
    gpus: list[Gpu] = field(default_factory=list)
    #: NVIDIA driver version, e.g. "535.104.12" (R610+ "KMD Version" lines count as the driver version).
    driver_version: str | None = None
    #: Highest CUDA version the driver supports, e.g. "12.2" (the "CUDA Version"/"CUDA UMD Version" field).
    cuda_driver_max: str | None = None
    #: Apple Silicon chip, e.g. "Apple M2 Ultra"; None elsewhere.
    apple_chip: str | None = None
    #: True when torch.backends.mps would be usable (Apple Silicon, macOS >= 12.3); None when unknown.
    mps_available: bool | None = None
    os_version: str | None = None
    #: Container or platform hints: "autodl", "docker", "lxd", "colab", "kaggle", ...
    environment: list[str] = field(default_factory=list)
    #: Memory shared by CPU and GPU on Apple Silicon (equal to ram_bytes there); None elsewhere.
    unified_memory_bytes: int | None = None
    #: Things the facts could not establish for sure (cut-off output, unknown compute capability, ...).
    warnings: list[str] = field(default_factory=list)

    @property
    def platform(self) -> str:
        """The accelerator family the planner targets: "cuda", "mps" or "cpu"."""
        if self.gpus:
            return "cuda"
        if self.apple_chip and self.mps_available is not False:
            return "mps"
        return "cpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostFacts:
        """Read facts recorded by `modelrig facts --json` (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["gpus"] = [Gpu(**g) for g in data.get("gpus", [])]
        values["environment"] = list(data.get("environment", []))
        values["warnings"] = list(data.get("warnings", []))
        return cls(**values)


def read_facts(path: Path) -> HostFacts:
    """Host facts recorded as JSON (`modelrig facts --json`, or a `{"facts": ...}` wrapper); a missing or malformed
    file is a usage error naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("facts"), dict):
            data = data["facts"]
        return HostFacts.from_dict(data)
    except FileNotFoundError:
        raise UsageError(f"{path}: facts file not found") from None
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: not a host facts JSON document ({exc})") from None
