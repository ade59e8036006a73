"""Pure parser for `python -m torch.utils.collect_env` reports, as users paste them into bug reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TorchEnvReport:
    """The host-relevant parts of a collect_env report."""

    torch_version: str | None
    #: "CUDA used to build PyTorch": "12.6", or None for CPU/MPS builds ("None").
    torch_cuda: str | None
    #: "Ubuntu 22.04.5 LTS" / "macOS 13.7.4".
    os_name: str | None
    arch: str | None
    cuda_available: bool | None
    gpu_names: list[str] = field(default_factory=list)
    driver_version: str | None = None
    #: The CPU model ("Apple M2 Max"; on Linux the lscpu "Model name"), when the report got that far.
    cpu: str | None = None
    cpu_count: int | None = None
    #: From a pasted `torch.backends.mps.is_available()` line, when present (collect_env itself does not say).
    mps_available: bool | None = None
    #: GPU name -> "9.0" for every "<GPU> with CUDA capability sm_90 is not compatible" warning.
    incompatible_gpus: dict[str, str] = field(default_factory=dict)


_NONE = {"none", "n/a", "no cuda", "could not collect", ""}


def _clean(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in _NONE else value.strip()


def _bool(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").strip().lower())


def parse_collect_env(text: str) -> TorchEnvReport:
    """Parse a collect_env report; cut-off reports give None for what they lack."""
    values: dict[str, str] = {}
    lines = text.splitlines()
    gpu_names: list[str] = []
    cpu: str | None = None
    for k, line in enumerate(lines):
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or line.startswith(">>>"):
            continue
        values.setdefault(key, value.strip())
        if key == "GPU models and configuration":
            first = value.strip()
            following = [n.strip() for n in lines[k + 1:] if re.match(r"^GPU \d+:", n.strip())]
            for entry in ([first] if first else []) + following:
                match = re.match(r"GPU \d+:\s*(.+)", entry)
                if match:
                    gpu_names.append(match[1].strip())
        if key == "CPU" and not value.strip() and k + 1 < len(lines) and ":" not in lines[k + 1]:
            cpu = _clean(lines[k + 1])
    os_match = re.match(r"(.+?)\s*\((\w+)\)\s*$", values.get("OS", ""))
    mps = re.search(r"Is MPS available\?\s*(True|False)", text)
    incompatible = {m[1].strip(): f"{m[2][:-1]}.{m[2][-1]}" for m in
                    re.finditer(r"^(.+?) with CUDA capability sm_(\d+) is not compatible", text, re.MULTILINE)}
    cpu_count = values.get("CPU(s)")
    return TorchEnvReport(
        torch_version=_clean(values.get("PyTorch version")),
        torch_cuda=_clean(values.get("CUDA used to build PyTorch")),
        os_name=os_match[1] if os_match else _clean(values.get("OS")),
        arch=os_match[2] if os_match else None,
        cuda_available=_bool(values.get("Is CUDA available")),
        gpu_names=gpu_names,
        driver_version=_clean(values.get("Nvidia driver version")),
        cpu=cpu or _clean(values.get("Model name")),
        cpu_count=int(cpu_count) if cpu_count and cpu_count.isdigit() else None,
        mps_available=(mps[1] == "True") if mps else None,
        incompatible_gpus=incompatible,
    )
