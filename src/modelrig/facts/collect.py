"""Gather host facts: run nvidia-smi / system_profiler / sysctl (or read recorded outputs) and merge the answers."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelrig.errors import UsageError
from modelrig.facts import HostFacts, macos, nvidia
from modelrig.facts.collect_env import TorchEnvReport, parse_collect_env
from modelrig.stamp import atomic_write_text

#: Recorded output name -> file name in a `--from-dir` folder.
OUTPUT_FILES: dict[str, str] = {
    "nvidia-smi": "nvidia-smi.txt",
    "nvidia-smi-query": "nvidia-smi-query.csv",
    "nvidia-smi-L": "nvidia-smi-L.txt",
    "nvidia-smi-version": "nvidia-smi-version.txt",
    "system_profiler": "system_profiler.txt",
    "sysctl": "sysctl.txt",
    "sw_vers": "sw_vers.txt",
    "meminfo": "meminfo.txt",
    "collect-env": "collect_env.txt",
}
#: In a `--from-dir` folder: the facts no command output gives (os, cpu, RAM, disk, environment), as JSON.
HOST_FILE = "host.json"
#: Output name -> the command that produces it on a live host.
COMMANDS: dict[str, list[str]] = {
    "nvidia-smi": ["nvidia-smi"],
    "nvidia-smi-query": ["nvidia-smi", f"--query-gpu={','.join(nvidia.QUERY_FIELDS)}",
                         "--format=csv,noheader,nounits"],
    "nvidia-smi-L": ["nvidia-smi", "-L"],
    "system_profiler": ["system_profiler", "SPHardwareDataType"],
    "sysctl": ["sysctl", "hw.memsize", "hw.ncpu", "machdep.cpu.brand_string"],
    "sw_vers": ["sw_vers"],
}
#: Seconds each command may take; nvidia-smi can hang for a long time on a wedged driver.
COMMAND_TIMEOUT = 20.0
_HOST_KEYS = ("os", "arch", "cpu", "cpu_count", "ram_bytes", "disk_free_bytes", "data_root", "os_version",
              "environment")


def facts_from_outputs(outputs: Mapping[str, str], *, host: Mapping[str, Any]) -> HostFacts:
    """Merge command outputs (see `OUTPUT_FILES` for the names) with the basic host facts in `host`.

    Pure: `host` supplies os, arch, cpu, cpu_count, ram_bytes, disk_free_bytes, data_root, os_version and
    environment (missing ones become "unknown" / 0); the outputs add GPUs, driver, CUDA maximum, and on macOS
    the chip, unified memory, core count and MPS support. The query CSV is read with `nvidia.QUERY_FIELDS` when
    it has neither a header nor a command line.
    """
    warnings: list[str] = []
    table = nvidia.parse_table(outputs["nvidia-smi"]) if outputs.get("nvidia-smi") else None
    query = None
    if outputs.get("nvidia-smi-query"):
        query = nvidia.parse_query_csv(outputs["nvidia-smi-query"])
        if not query:
            query = nvidia.parse_query_csv(outputs["nvidia-smi-query"], fields=nvidia.QUERY_FIELDS)
    listed = nvidia.parse_list(outputs["nvidia-smi-L"]) if outputs.get("nvidia-smi-L") else None
    version = nvidia.parse_version(outputs["nvidia-smi-version"]) if outputs.get("nvidia-smi-version") else None
    gpu_facts = nvidia.merge(table=table, query=query, listed=listed, version=version)
    warnings += gpu_facts.warnings

    values: dict[str, Any] = {
        "os": "unknown", "arch": "unknown", "cpu": "unknown", "cpu_count": 0, "ram_bytes": 0,
        "disk_free_bytes": 0, "data_root": "", "os_version": None, "environment": [],
    }
    values.update({k: v for k, v in host.items() if k in _HOST_KEYS})
    if values["os"] == "unknown" and table and table.gpus:
        values["os"] = "windows" if re.search(r"\b(WDDM|TCC|MCDM)\b", outputs["nvidia-smi"]) else "linux"
    if outputs.get("meminfo") and not values["ram_bytes"]:
        values["ram_bytes"] = _meminfo_total(outputs["meminfo"]) or 0

    apple_chip = unified = None
    mps: bool | None = None if values["os"] in ("darwin", "unknown") else False
    hardware = macos.parse_system_profiler(outputs["system_profiler"]) if outputs.get("system_profiler") else None
    sysctl = macos.parse_sysctl(outputs["sysctl"]) if outputs.get("sysctl") else None
    if hardware or sysctl:
        values["os"] = "darwin"
        apple_chip = (hardware.chip if hardware else None) or (sysctl.apple_chip if sysctl else None)
        if sysctl and sysctl.brand == "Apple processor" and not apple_chip:
            apple_chip = "Apple Silicon (unnamed)"
            warnings.append("sysctl names the CPU only as 'Apple processor' (macOS 11.0): chip model unknown")
        if apple_chip:
            values["arch"] = "arm64"
            values["cpu"] = apple_chip
        elif hardware and hardware.processor:
            values["cpu"] = hardware.processor
        if sysctl and sysctl.translated:
            warnings.append("sysctl ran under Rosetta 2 (x86 keys on Apple Silicon): use a native arm64 Python")
        memory = (sysctl.memsize if sysctl else None) or (hardware.memory_bytes if hardware else None)
        if memory:
            values["ram_bytes"] = memory
        cores = (hardware.cores if hardware else None) or (sysctl.cpu_count if sysctl else None)
        if cores:
            values["cpu_count"] = cores
        if outputs.get("sw_vers"):
            values["os_version"] = macos.parse_sw_vers(outputs["sw_vers"]) or values["os_version"]
        if apple_chip:
            unified = values["ram_bytes"] or None
            mps = macos.mps_supported(values["os_version"], arch="arm64")
        else:
            mps = False
    driver = gpu_facts.driver_version
    if outputs.get("collect-env"):
        report = parse_collect_env(outputs["collect-env"])
        apple_chip, mps, driver = _supplement_from_collect_env(values, report, warnings, apple_chip=apple_chip,
                                                              mps=mps, driver=driver, gpus=gpu_facts.gpus)
    return HostFacts(
        **values,
        gpus=gpu_facts.gpus,
        driver_version=driver,
        cuda_driver_max=gpu_facts.cuda_driver_max,
        apple_chip=apple_chip,
        mps_available=mps,
        unified_memory_bytes=unified,
        warnings=warnings,
    )


def _supplement_from_collect_env(values: dict[str, Any], report: TorchEnvReport, warnings: list[str], *,
                                 apple_chip: str | None, mps: bool | None, driver: str | None,
                                 gpus: list[Any]) -> tuple[str | None, bool | None, str | None]:
    """Fill what no other output gave from a pasted `python -m torch.utils.collect_env` report (in place)."""
    mac = bool(report.os_name and report.os_name.startswith("macOS"))
    if values["os"] == "unknown" and report.os_name:
        values["os"] = "darwin" if mac else "windows" if "Windows" in report.os_name else "linux"
    if values["os_version"] is None and report.os_name:
        values["os_version"] = report.os_name.removeprefix("macOS ").strip()
    if values["arch"] == "unknown" and report.arch:
        values["arch"] = report.arch
    if values["cpu"] == "unknown" and report.cpu:
        values["cpu"] = report.cpu
    if not values["cpu_count"] and report.cpu_count:
        values["cpu_count"] = report.cpu_count
    if mac and apple_chip is None and report.cpu and report.cpu.startswith("Apple"):
        apple_chip = report.cpu
    if mac and mps is None:
        mps = report.mps_available if report.mps_available is not None else \
            macos.mps_supported(values["os_version"], arch=values["arch"])
    if report.gpu_names and not gpus:
        warnings.append(f"the collect_env report names {', '.join(report.gpu_names)} but not their memory: record "
                        "the nvidia-smi outputs too (modelrig facts --save) to plan for them")
    for name, capability in report.incompatible_gpus.items():
        warnings.append(f"torch {report.torch_version} on that host was not built for {name} (sm_"
                        f"{capability.replace('.', '')}): a newer build is needed there")
    return apple_chip, mps, driver or report.driver_version


def _meminfo_total(text: str) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match[1]) * 1024 if match else None


def read_outputs(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Recorded outputs and host facts from a folder (file names in `OUTPUT_FILES`, plus an optional host.json)."""
    if not directory.is_dir():
        raise UsageError(f"--from-dir {directory}: not a folder")
    outputs = {name: (directory / file).read_text(encoding="utf-8", errors="replace")
               for name, file in OUTPUT_FILES.items() if (directory / file).is_file()}
    host: dict[str, Any] = {}
    host_file = directory / HOST_FILE
    if host_file.is_file():
        try:
            host = json.loads(host_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{host_file}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(host, dict):
            raise UsageError(f"{host_file}: expected a JSON object with keys such as os, cpu, ram_bytes")
    if not outputs and not host:
        known = ", ".join([*OUTPUT_FILES.values(), HOST_FILE])
        raise UsageError(f"--from-dir {directory}: no recorded outputs found (expected any of {known})")
    return outputs, host


def facts_from_dir(directory: Path, *, data_root: Path) -> HostFacts:
    """Host facts from recorded outputs in `directory` (for tests and for planning a remote host)."""
    outputs, host = read_outputs(directory)
    host = {"data_root": str(data_root), **host}
    facts = facts_from_outputs(outputs, host=host)
    if not (directory / HOST_FILE).is_file():
        note = f"no {HOST_FILE} in {directory}: CPU, RAM and free disk not recorded"
        facts = replace(facts, warnings=[*facts.warnings, note])
    return facts


def run_command(argv: list[str], *, timeout: float = COMMAND_TIMEOUT) -> str | None:
    """stdout of a command, or None when it is missing, fails or times out."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None


def live_outputs(system: str, *, timeout: float = COMMAND_TIMEOUT) -> dict[str, str]:
    """Run the commands that make sense on this OS and return the outputs that came back.

    The query CSV is stored behind its command line, so it names its own fields; drivers older than ~510 reject
    the `compute_cap` field, so the query is retried without it (and `-L` fills in exact names).
    """
    outputs: dict[str, str] = {}
    if system == "darwin":
        for name in ("system_profiler", "sysctl", "sw_vers"):
            out = run_command(COMMANDS[name], timeout=timeout)
            if out is not None:
                outputs[name] = out
        return outputs
    table = run_command(COMMANDS["nvidia-smi"], timeout=timeout)
    if table is None:
        return outputs
    outputs["nvidia-smi"] = table
    fields = list(nvidia.QUERY_FIELDS)
    for attempt in (fields, [f for f in fields if f != "compute_cap"]):
        argv = ["nvidia-smi", f"--query-gpu={','.join(attempt)}", "--format=csv,noheader,nounits"]
        out = run_command(argv, timeout=timeout)
        if out is not None:
            outputs["nvidia-smi-query"] = f"$ {shlex.join(argv)}\n{out}"
            break
    if len(outputs) < 2 or "compute_cap" not in outputs["nvidia-smi-query"]:
        out = run_command(COMMANDS["nvidia-smi-L"], timeout=timeout)
        if out is not None:
            outputs["nvidia-smi-L"] = out
    return outputs


def detect_environment(*, root: Path = Path("/"), environ: Mapping[str, str] | None = None,
                       hostname: str | None = None) -> list[str]:
    """Container and platform hints: "autodl", "docker", "lxd", "colab", "kaggle" (sorted).

    Looks at marker files under `root` (so tests can use a fake root) and environment variables.
    """
    env = os.environ if environ is None else environ
    host = socket.gethostname() if hostname is None else hostname
    found: set[str] = set()
    if (os.access(root / "root", os.X_OK) and (root / "root" / "autodl-tmp").is_dir()) \
            or host.startswith("autodl-container"):  # /root is unreadable to other users on most Linux hosts
        found.add("autodl")
    if (root / ".dockerenv").exists():
        found.add("docker")
    if (root / "dev" / "lxd" / "sock").exists() or env.get("container") == "lxc":
        found.add("lxd")
    if any(k.startswith("COLAB_") for k in env) or (root / "content" / "sample_data").is_dir():
        found.add("colab")
    if any(k.startswith("KAGGLE_") for k in env) or (root / "kaggle" / "working").is_dir():
        found.add("kaggle")
    return sorted(found)


def _cpu_name(system: str) -> str:
    if system == "linux":
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        match = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def ram_bytes(*, root: Path = Path("/")) -> int:
    """Physical memory, or the cgroup memory limit when a container has a lower one (AutoDL, Docker)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for limit_file in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = (root / limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and 0 < int(limit) < total:
            return int(limit)
    return total


def _disk_free(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def _os_version(system: str) -> str | None:
    if system == "linux":
        try:
            return platform.freedesktop_os_release().get("PRETTY_NAME")
        except OSError:
            return platform.release() or None
    if system == "darwin":
        return platform.mac_ver()[0] or None
    return platform.version() or None


def cpu_count(*, root: Path = Path("/")) -> int:
    """Usable CPUs: the affinity mask, lowered to a container's cgroup CPU quota when there is one (AutoDL)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota_files = {"sys/fs/cgroup/cpu.max": None,
                   "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "sys/fs/cgroup/cpu/cpu.cfs_period_us"}
    for quota_file, period_file in quota_files.items():
        try:
            words = (root / quota_file).read_text().split()
            if period_file:
                words.append((root / period_file).read_text().strip())
        except OSError:
            continue
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit() and int(words[1]) > 0:
            return max(1, min(count, -(-int(words[0]) // int(words[1]))))
    return count


def live_host(data_root: Path) -> dict[str, Any]:
    """The basic facts of this machine: OS, arch, CPU, RAM, free disk at the data root, environment hints."""
    system = platform.system().lower()
    return {
        "os": system,
        "arch": platform.machine().lower() or "unknown",
        "cpu": _cpu_name(system),
        "cpu_count": cpu_count(),
        "ram_bytes": ram_bytes(),
        "disk_free_bytes": _disk_free(data_root),
        "data_root": str(data_root),
        "os_version": _os_version(system),
        "environment": detect_environment(),
    }


def collect(data_root: Path, *, timeout: float = COMMAND_TIMEOUT, save_to: Path | None = None) -> HostFacts:
    """Facts about this machine, running nvidia-smi (Linux, Windows) or system_profiler/sysctl (macOS).

    With `save_to`, the command outputs and host.json are also written there, in the layout `facts_from_dir` reads
    (so a remote host can be recorded once and planned for elsewhere).
    """
    host = live_host(data_root)
    outputs = live_outputs(host["os"], timeout=timeout)
    if save_to is not None:
        save_outputs(save_to, outputs, host)
    return facts_from_outputs(outputs, host=host)


def save_outputs(directory: Path, outputs: Mapping[str, str], host: Mapping[str, Any]) -> None:
    """Write outputs (names from `OUTPUT_FILES`) and host.json into `directory`, each file atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {OUTPUT_FILES[name]: text for name, text in outputs.items()}
    files[HOST_FILE] = json.dumps(dict(host), indent=2) + "\n"
    for file, text in files.items():
        atomic_write_text(directory / file, text)
