"""Pure parsers for nvidia-smi output: the default table, `--query-gpu` CSV, `-L` and `--version`."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from modelrig.facts import Gpu
from modelrig.facts.gpus import lookup_capability

#: The fields `modelrig facts` asks `nvidia-smi --query-gpu=` for, in this order.
QUERY_FIELDS: tuple[str, ...] = ("index", "name", "memory.total", "compute_cap", "driver_version", "uuid")

_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>\S+)\s+(?:Driver|KMD)\s+Version:\s*(?P<driver>\S+)"
    r"(?:\s+CUDA(?:\s+UMD)?\s+Version:\s*(?P<cuda>\S+))?"
)
_GPU_ROW = re.compile(
    r"^\|\s*(?P<index>\d+)\s+(?P<name>\S.*?)\s+(?P<mode>On|Off|WDDM|TCC|MCDM|N/A)\s*\|"
    r"\s*(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\b"
)
_MEMORY = re.compile(r"(?P<used>\d+)\s*MiB\s*/\s*(?P<total>\d+)\s*MiB")
_BORDER = re.compile(r"^[+|][-=+|]*[+|]\s*$")
_LIST_ROW = re.compile(r"^GPU\s+(?P<index>\d+):\s+(?P<name>.+?)\s+\(UUID:\s*(?P<uuid>[^)\s]+)\)")
_MIG_LIST_ROW = re.compile(r"^\s+MIG\s+(?P<profile>\S+)\s+Device\s+(?P<index>\d+):")
_UNKNOWN = {"", "n/a", "[n/a]", "[not supported]", "[unknown error]", "[insufficient permissions]"}


@dataclass(frozen=True)
class TableGpu:
    """One GPU row block of the default `nvidia-smi` table."""

    index: int
    #: The name as printed; nvidia-smi cuts long names to e.g. "NVIDIA GeForce RTX 4080 ...".
    name: str
    memory_mib: int
    bus_id: str
    #: "Enabled", "Disabled", "N/A", "ERR!", or None in tables older than driver 450 (no "MIG M." row).
    mig_mode: str | None = None

    @property
    def name_truncated(self) -> bool:
        """True when nvidia-smi shortened the name (it ends in "...")."""
        return self.name.endswith("...")


@dataclass(frozen=True)
class SmiTable:
    """What the default `nvidia-smi` table says."""

    #: Version of the nvidia-smi tool itself (can differ from the driver, e.g. on Colab 2020: 450.66 vs 418.67).
    smi_version: str | None
    #: "Driver Version", or "KMD Version" on R610+ drivers.
    driver_version: str | None
    #: "CUDA Version" / "CUDA UMD Version"; None when absent or "N/A" (FreeBSD's Linux shim).
    cuda_driver_max: str | None
    gpus: list[TableGpu] = field(default_factory=list)
    #: Number of MIG devices listed in the "MIG devices:" block.
    mig_devices: int = 0
    #: False when the GPU block does not end with a full border: the output was cut and GPUs may be missing.
    complete: bool = True


@dataclass(frozen=True)
class ListedGpu:
    """One line of `nvidia-smi -L`."""

    index: int
    name: str
    uuid: str
    mig_devices: int = 0


@dataclass(frozen=True)
class SmiVersion:
    """What `nvidia-smi --version` says."""

    smi_version: str | None
    driver_version: str | None
    cuda_driver_max: str | None


def _value(text: str | None) -> str | None:
    """The field value, or None for nvidia-smi's placeholders ("N/A", "[Not Supported]", ...)."""
    if text is None:
        return None
    text = text.strip()
    return None if text.lower() in _UNKNOWN else text


def parse_table(text: str) -> SmiTable:
    """Parse the default `nvidia-smi` table.

    Handles the pre-450 layout (two lines per GPU), the 450-535 and 545+ layouts, R610's "KMD Version / CUDA UMD
    Version" header, Windows' "Driver-Model" column, MIG-enabled GPUs, and output cut anywhere (shell prompts and
    dates around the table are ignored). A text with no table gives an `SmiTable` without GPUs.
    """
    smi = driver = cuda = None
    gpus: list[TableGpu] = []
    lines = text.splitlines()
    mig_devices = 0
    in_mig = False
    complete = True
    border_width = 0
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        header = _HEADER.search(line)
        if header and smi is None:
            smi, driver, cuda = header["smi"], _value(header["driver"]), _value(header["cuda"])
            border_width = len(line)
        if "MIG devices:" in line:
            in_mig = True
        elif "Processes:" in line:
            in_mig = False
        elif in_mig and re.match(r"^\|\s*\d+\s+\d+\s+\d+\s+\d+\s*\|", line):
            mig_devices += 1
        row = _GPU_ROW.match(line)
        if row:
            block: list[str] = []
            j = i + 1
            while j < len(lines) and not _BORDER.match(lines[j].rstrip()) and not _GPU_ROW.match(lines[j]):
                block.append(lines[j])
                j += 1
            end = lines[j].rstrip() if j < len(lines) else ""
            complete = bool(end) and _BORDER.match(end) is not None and (
                not border_width or len(end) >= border_width
            )
            memory = next((m for m in map(_MEMORY.search, block) if m), None)
            mig_mode = None
            if len(block) >= 2:
                cells = [c.strip() for c in block[1].strip().strip("|").split("|")]
                mig_mode = cells[-1] or None
            gpus.append(TableGpu(
                index=int(row["index"]),
                name=row["name"].strip(),
                memory_mib=int(memory["total"]) if memory else 0,
                bus_id=row["bus"],
                mig_mode=mig_mode,
            ))
            i = j
            continue
        i += 1
    if not gpus and smi is not None:
        complete = any(_BORDER.match(raw.rstrip()) and "=" in raw for raw in lines)
    return SmiTable(smi_version=smi, driver_version=driver, cuda_driver_max=cuda, gpus=gpus,
                    mig_devices=mig_devices, complete=complete)


def fields_from_command(command: str) -> list[str]:
    """The field list of a `nvidia-smi --query-gpu=a,b,c ...` command line (empty when there is none)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for k, word in enumerate(words):
        if word.startswith("--query-gpu="):
            return [f.strip() for f in word.split("=", 1)[1].split(",") if f.strip()]
        if word == "--query-gpu" and k + 1 < len(words):
            return [f.strip() for f in words[k + 1].split(",") if f.strip()]
    return []


def _field_name(header: str) -> str:
    """ "memory.total [MiB]" -> "memory.total"."""
    return re.sub(r"\s*\[[^\]]*\]\s*$", "", header.strip())


def parse_query_csv(text: str, *, fields: list[str] | tuple[str, ...] | None = None) -> list[dict[str, str | None]]:
    """Parse `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` output into one dict per GPU.

    Keys are the query field names (units such as " [MiB]" dropped); values are stripped strings, None for
    placeholders like "[N/A]". The field list comes from, in order: `fields`, a header row, or a shell command line
    `nvidia-smi --query-gpu=...` in the text (recorded transcripts). Values keep their units ("81559 MiB") unless
    the output was made with `nounits`; `memory_mib` reads both.
    """
    names = list(fields) if fields else []
    rows: list[dict[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if "nvidia-smi" in line:
            if not names:
                names = fields_from_command(line[line.index("nvidia-smi"):])
            continue
        cells = [c.strip() for c in line.split(", ")]
        if not rows and _is_header(cells, names):
            names = [_field_name(c) for c in cells]
            continue
        if not names or len(cells) != len(names):
            continue
        rows.append({name: _value(cell) for name, cell in zip(names, cells, strict=True)})
    return rows


def _is_header(cells: list[str], names: list[str]) -> bool:
    known = set(QUERY_FIELDS) | {"compute_mode", "timestamp", "count", "kmd_version", "pci.bus_id"}
    plain = [_field_name(c) for c in cells]
    return plain == names or (any(p in known for p in plain) and not cells[0].isdigit())


def memory_mib(value: str | None) -> int | None:
    """ "81559 MiB" or "81559" -> 81559; None for a missing value."""
    if not value:
        return None
    match = re.match(r"(\d+)", value)
    return int(match[1]) if match else None


def parse_list(text: str) -> list[ListedGpu]:
    """Parse `nvidia-smi -L` ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)", with indented MIG lines)."""
    gpus: list[ListedGpu] = []
    for line in text.splitlines():
        row = _LIST_ROW.match(line.strip())
        if row:
            gpus.append(ListedGpu(index=int(row["index"]), name=row["name"], uuid=row["uuid"]))
        elif gpus and _MIG_LIST_ROW.match(line):
            last = gpus[-1]
            gpus[-1] = ListedGpu(last.index, last.name, last.uuid, last.mig_devices + 1)
    return gpus


def parse_version(text: str) -> SmiVersion:
    """Parse `nvidia-smi --version`; R610+ prints "KMD version" / "CUDA UMD version" and deprecates the old keys."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        value = value.strip()
        if sep and value and not value.lower().startswith("deprecated"):
            values[key.strip().lower()] = value
    return SmiVersion(
        smi_version=_value(values.get("nvidia-smi version")),
        driver_version=_value(values.get("kmd version") or values.get("driver version")),
        cuda_driver_max=_value(values.get("cuda umd version") or values.get("cuda version")),
    )


@dataclass(frozen=True)
class NvidiaFacts:
    """The NVIDIA part of the host facts, merged from whichever nvidia-smi outputs were available."""

    gpus: list[Gpu]
    driver_version: str | None
    cuda_driver_max: str | None
    warnings: list[str] = field(default_factory=list)


def merge(
    *,
    table: SmiTable | None = None,
    query: list[dict[str, str | None]] | None = None,
    listed: list[ListedGpu] | None = None,
    version: SmiVersion | None = None,
) -> NvidiaFacts:
    """Merge nvidia-smi outputs into GPUs, driver version and CUDA maximum.

    The query CSV gives exact names, memory, compute capability and UUIDs; `-L` gives exact names and UUIDs; the
    table gives memory, MIG mode and the highest CUDA version the driver supports (the CSV has no such field);
    `--version` fills in the driver and CUDA versions when the table is missing. GPUs are matched by index (by
    position when the CSV has no index column). A compute capability nvidia-smi did not give comes from
    data/gpus.yaml; every guess or gap becomes a warning.
    """
    table_gpus = {g.index: g for g in table.gpus} if table else {}
    rows: dict[int, dict[str, str | None]] = {}
    for position, row in enumerate(query or []):
        index = row.get("index")
        rows[int(index) if index and index.isdigit() else position] = row
    listed_by_index = {g.index: g for g in listed or []}
    warnings: list[str] = []
    gpus: list[Gpu] = []
    for index in sorted(set(table_gpus) | set(rows) | set(listed_by_index)):
        t, row, li = table_gpus.get(index), rows.get(index, {}), listed_by_index.get(index)
        name = row.get("name") or (li.name if li else None) or (t.name if t else None)
        if name is None:
            continue
        memory = memory_mib(row.get("memory.total")) or (t.memory_mib if t else 0)
        truncated = name.endswith("...")
        capability, source = row.get("compute_cap"), "nvidia-smi" if row.get("compute_cap") else None
        if capability is None:
            found = lookup_capability(name)
            capability = found.capability
            source = {"exact": "table", "prefix": "table-prefix"}.get(found.match) if capability else None
            if found.note:
                warnings.append(f"GPU {index} ({name}): {found.note}")
        if not memory:
            warnings.append(f"GPU {index} ({name}): memory size unknown (no table and no memory.total)")
        mig = bool((t and t.mig_mode == "Enabled") or (li and li.mig_devices))
        gpus.append(Gpu(index=index, name=name, memory_mib=memory, compute_capability=capability,
                        uuid=row.get("uuid") or (li.uuid if li else None), mig=mig, name_truncated=truncated,
                        capability_source=source))
    driver = (table.driver_version if table else None) or (version.driver_version if version else None)
    if not driver:
        driver = next((r["driver_version"] for r in (query or []) if r.get("driver_version")), None)
    cuda = (table.cuda_driver_max if table else None) or (version.cuda_driver_max if version else None)
    if table and not table.complete:
        warnings.append("nvidia-smi output was cut off: there may be more GPUs than listed")
    if gpus and not cuda:
        warnings.append("nvidia-smi did not report the highest supported CUDA version (CUDA Version: N/A)")
    return NvidiaFacts(gpus=gpus, driver_version=driver, cuda_driver_max=cuda, warnings=warnings)
