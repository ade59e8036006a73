"""The planner: pure functions from a manifest and host facts to a `Plan` (torch build, precision, disk, steps)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from modelrig.config import HostConfig
from modelrig.convert.fusion import group_steps
from modelrig.errors import HostCannotRunError
from modelrig.facts import Gpu, HostFacts
from modelrig.humansize import format_size
from modelrig.manifest import EnvSpec, Manifest, Resources
from modelrig.plan import EnvPlan, Plan, TorchBuild

TORCH_BUILDS_FILE = Path(__file__).resolve().parent / "data" / "torch_builds.yaml"

#: Share of each GPU's memory kept free for fragmentation, activations and the KV cache.
GPU_HEADROOM = 0.10
#: Memory the CUDA context and kernels take on each GPU, in GB.
CUDA_CONTEXT_GB = 1.0
#: Metal's recommended working set is about 2/3 of RAM on Macs with up to 36 GB and about 3/4 above that.
MPS_SHARE_SMALL = 2 / 3
MPS_SHARE_LARGE = 0.75
MPS_LARGE_RAM_GB = 36.0
#: Share of RAM a CPU-only host gives to the weights; the rest is the OS, the Python process and the loading peak.
CPU_SHARE = 0.75
#: Disk kept free beyond what the plan writes: 10% plus 2 GB for caches and temporary files.
DISK_HEADROOM = 0.10
DISK_RESERVE_GB = 2.0
#: Output size of a conversion step relative to the 16-bit model size (tf_to_pt writes fp32).
_STEP_SIZE_FACTOR = {"llama_meta_to_hf": 1.0, "apply_delta": 1.0, "to_safetensors": 1.0, "tf_to_pt": 2.0}

GB = 1e9


# ---------------------------------------------------------------------------------------------------------
# The torch build table.


@dataclass(frozen=True)
class ArchSet:
    """GPU architectures one wheel variant has kernels for: SASS per capability, and PTX the driver can JIT."""

    sm: tuple[tuple[int, int], ...]
    ptx: tuple[tuple[int, int], ...]

    def supports(self, capability: tuple[int, int]) -> bool:
        """True when a GPU of `capability` can run these wheels (same-major SASS with a lower minor, or older PTX)."""
        major, minor = capability
        if any(m == major and n <= minor for m, n in self.sm):
            return True
        return any(p <= capability for p in self.ptx)

    def describe(self) -> str:
        """`sm_50..sm_90` style summary for messages."""
        names = [f"sm_{m}{n}" for m, n in self.sm]
        return " ".join(names) + ("" if not self.ptx else " +PTX " + " ".join(f"{m}.{n}" for m, n in self.ptx))


@dataclass(frozen=True)
class CudaVersion:
    """A CUDA wheel variant (`cu121`) and the driver it needs."""

    variant: str
    cuda: tuple[int, int]
    #: The driver of the CUDA toolkit release itself.
    min_driver: tuple[int, ...]
    #: The oldest driver that runs this CUDA version through minor version compatibility.
    min_driver_compat: tuple[int, ...]


@dataclass(frozen=True)
class TorchRelease:
    """One torch version: its Python range, companion versions, CUDA variants and their architectures."""

    version: Version
    python: SpecifierSet
    #: Companion package versions built for this torch; None: the package has no release for it.
    companions: dict[str, str | None]
    variants: dict[str, ArchSet]
    macos_arm64: bool
    verified: bool


@dataclass(frozen=True)
class TorchTable:
    """`torch_builds.yaml` in memory."""

    releases: dict[Version, TorchRelease]
    cuda: dict[str, CudaVersion]

    def release(self, version: str | Version) -> TorchRelease | None:
        """The release entry for an exact version, if the table has it."""
        try:
            return self.releases.get(Version(str(version)))
        except InvalidVersion:
            return None


def _pair(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def _driver(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


def parse_torch_table(data: Mapping[str, Any]) -> TorchTable:
    """Build a `TorchTable` from the parsed YAML document (see `torch_builds.yaml` for the format)."""
    cuda = {
        name: CudaVersion(variant=name, cuda=_pair(entry["cuda"]), min_driver=_driver(entry["min_driver"]),
                          min_driver_compat=_driver(entry.get("min_driver_compat", entry["min_driver"])))
        for name, entry in data["cuda_versions"].items()
    }
    arch_sets = {
        name: ArchSet(sm=tuple(_pair(s) for s in entry["sm"]), ptx=tuple(_pair(s) for s in entry.get("ptx", [])))
        for name, entry in data["arch_sets"].items()
    }
    releases: dict[Version, TorchRelease] = {}
    for line in data["releases"]:
        variants = {variant: arch_sets[arch] for variant, arch in line["cuda"].items()}
        for version, companions in line["versions"].items():
            releases[Version(version)] = TorchRelease(
                version=Version(version),
                python=SpecifierSet(line["python"]),
                companions=dict(companions),
                variants=variants,
                macos_arm64=bool(line.get("macos_arm64", True)),
                verified=bool(line.get("verified", True)),
            )
    return TorchTable(releases=releases, cuda=cuda)


@lru_cache(maxsize=4)
def load_torch_table(path: Path = TORCH_BUILDS_FILE) -> TorchTable:
    """Read and parse the torch build table (cached)."""
    return parse_torch_table(yaml.safe_load(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------------------
# Torch build.


def _capability(gpu: Gpu) -> tuple[int, int] | None:
    return _pair(gpu.compute_capability) if gpu.compute_capability else None


def _driver_cuda(facts: HostFacts) -> tuple[int, int] | None:
    """The newest CUDA version the host's driver supports natively (nvidia-smi's "CUDA Version")."""
    if facts.cuda_driver_max:
        try:
            return _pair(facts.cuda_driver_max)
        except ValueError:
            return None
    return None


def driver_runs(facts: HostFacts, cuda: CudaVersion) -> bool | None:
    """Whether the host's driver runs wheels built with `cuda`; None when the host reported no driver.

    PyTorch wheels carry their own CUDA runtime, so minor version compatibility applies: a CUDA 12.x build runs on
    any driver >= 525.60.13, a 11.x build on >= 450.80.02, a 13.x build on >= 580. Without a driver number the
    driver's own CUDA version (nvidia-smi's "CUDA Version") must be at least the variant's.
    """
    if facts.driver_version and _driver(facts.driver_version):
        return _driver(facts.driver_version) >= cuda.min_driver_compat
    native = _driver_cuda(facts)
    return None if native is None else native >= cuda.cuda


def _companions(spec: EnvSpec) -> list[Requirement]:
    return [Requirement(r) for r in spec.torch_companions]


def _torch_candidates(spec: EnvSpec, table: TorchTable) -> list[TorchRelease]:
    """Table releases allowed by the manifest's torch specifier, Python version and pinned companions, newest first."""
    wanted = SpecifierSet(spec.torch)
    python = Version(spec.python)
    out = []
    for release in sorted(table.releases.values(), key=lambda r: r.version, reverse=True):
        if not wanted.contains(release.version, prereleases=False) or not release.python.contains(python):
            continue
        if any(not _companion_ok(req, release) for req in _companions(spec)):
            continue
        out.append(release)
    return out


def _companion_ok(req: Requirement, release: TorchRelease) -> bool:
    """A companion the manifest needs exists for `release` and matches the manifest's pin, if any."""
    if req.name in release.companions and release.companions[req.name] is None:
        return False
    if not req.specifier:
        return True
    version = release.companions.get(req.name)
    return version is not None and req.specifier.contains(version, prereleases=False)


def _exact_pin(spec: EnvSpec) -> str | None:
    specs = list(SpecifierSet(spec.torch))
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def _requirements(version: str, spec: EnvSpec, release: TorchRelease | None, warnings: list[str]) -> list[str]:
    reqs = [f"torch=={version}"]
    for req in _companions(spec):
        if req.specifier:
            reqs.append(str(req))
        elif release is not None and release.companions.get(req.name):
            reqs.append(f"{req.name}=={release.companions[req.name]}")
        else:
            reqs.append(req.name)
            warnings.append(f"{req.name}'s version matching torch {version} is unknown; it is left unpinned")
    return reqs


def _index(config: HostConfig, variant: str) -> str | None:
    if not config.pip.use_torch_index or variant == "default":
        return None
    return f"{config.pip.torch_index_base.rstrip('/')}/{variant}"


def plan_torch_build(
    facts: HostFacts, spec: EnvSpec, *, config: HostConfig, table: TorchTable | None = None,
    warnings: list[str] | None = None,
) -> TorchBuild:
    """Choose the torch version and wheel variant for this host.

    The newest version the manifest allows (its `torch` specifier, its Python, its pinned `torch_companions`) is
    taken; on CUDA hosts the newest version that has a usable variant, and for it the newest CUDA variant that the
    driver supports and whose kernels cover every GPU. Macs with Apple Silicon get PyPI's default wheels (MPS), other
    hosts the CPU index. An exact pin missing from the table is accepted on CPU and MPS hosts and refused on CUDA
    hosts. Raises `HostCannotRunError` with what would work; appends caveats to `warnings`.
    """
    table = table or load_torch_table()
    warnings = warnings if warnings is not None else []
    candidates = _torch_candidates(spec, table)
    pin = _exact_pin(spec)
    platform = facts.platform
    if platform in ("cpu", "mps"):
        variant = "default" if platform == "mps" or facts.os == "darwin" else "cpu"
        if platform == "mps":
            candidates = [r for r in candidates if r.macos_arm64]
        if candidates:
            release = candidates[0]
            if not release.verified:
                warnings.append(f"torch {release.version}: some facts in torch_builds.yaml are unverified")
            version = str(release.version)
        elif pin is not None and table.release(pin) is None:
            release, version = None, pin
            warnings.append(f"torch {pin} is not in torch_builds.yaml; its {variant} wheels are assumed to exist")
        else:
            raise HostCannotRunError(_no_release_message(spec))
        return TorchBuild(version=version, variant=variant, index_url=_index(config, variant),
                          requirements=_requirements(version, spec, release, warnings))

    if pin is not None and table.release(pin) is None:
        raise HostCannotRunError(f"torch {pin}'s CUDA variants are unknown: add it to torch_builds.yaml "
                                 "(or allow other torch versions in the manifest's env.torch)")
    if not candidates:
        raise HostCannotRunError(_no_release_message(spec))
    driver_cuda = _driver_cuda(facts)
    if driver_runs(facts, next(iter(table.cuda.values()))) is None:
        warnings.append("the NVIDIA driver's version is unknown; the newest variant is assumed to work")
    caps = [c for c in (_capability(g) for g in facts.gpus) if c is not None]
    if len(caps) < len(facts.gpus):
        warnings.append("a GPU's compute capability is unknown; wheel architecture support was not checked for it")
    for release in candidates:
        for variant in sorted(release.variants, key=lambda v: table.cuda[v].cuda, reverse=True):
            arch = release.variants[variant]
            if driver_runs(facts, table.cuda[variant]) is False:
                continue
            if not all(arch.supports(c) for c in caps):
                continue
            if not release.verified:
                warnings.append(f"torch {release.version}: some facts in torch_builds.yaml are unverified")
            if driver_cuda is not None and table.cuda[variant].cuda > driver_cuda:
                warnings.append(f"{variant} runs on driver {facts.driver_version} (CUDA {_cuda_text(driver_cuda)}) "
                                "through CUDA minor version compatibility")
            version = str(release.version)
            return TorchBuild(version=version, variant=variant, index_url=_index(config, variant),
                              requirements=_requirements(version, spec, release, warnings))
    raise HostCannotRunError(_no_cuda_build_message(facts, spec, candidates, driver_cuda, caps, table))


def _no_release_message(spec: EnvSpec) -> str:
    wanted = spec.torch or "any version"
    return (f"no torch release in torch_builds.yaml satisfies env.torch {wanted!r} with Python {spec.python}"
            + (f" and {', '.join(spec.torch_companions)}" if spec.torch_companions else "")
            + ": widen env.torch or add the release to torch_builds.yaml")


def _cuda_text(cuda: tuple[int, int]) -> str:
    return f"{cuda[0]}.{cuda[1]}"


def _no_cuda_build_message(
    facts: HostFacts, spec: EnvSpec, candidates: list[TorchRelease], driver_cuda: tuple[int, int] | None,
    caps: list[tuple[int, int]], table: TorchTable,
) -> str:
    """Why no (version, variant) works, and what would: a newer driver or a torch range that covers the GPU."""
    gpu = facts.gpus[0].name if facts.gpus else "GPU"
    cap_text = ", ".join(f"sm_{m}{n}" for m, n in sorted(set(caps)))
    arch_ok = [(r, v) for r in candidates for v in r.variants if all(r.variants[v].supports(c) for c in caps)]
    if arch_ok:
        # The kernels exist; the driver is too old for every variant that has them.
        release, variant = min(arch_ok, key=lambda rv: table.cuda[rv[1]].cuda)
        need = table.cuda[variant]
        have = f"CUDA {_cuda_text(driver_cuda)}" if driver_cuda else "an unknown CUDA version"
        return (f"the NVIDIA driver {facts.driver_version or ''} supports {have}, older than every torch build "
                f"the manifest allows for this {gpu} ({cap_text}): the oldest usable is torch {release.version}+"
                f"{variant}, which needs CUDA {_cuda_text(need.cuda)} (driver >= "
                f"{'.'.join(map(str, need.min_driver_compat))}); update the driver or allow an older torch"
                ).replace("  ", " ")
    anywhere = sorted(
        (r.version, v) for r in table.releases.values() for v in r.variants
        if all(r.variants[v].supports(c) for c in caps)
        and driver_runs(facts, table.cuda[v]) is not False
    )
    if anywhere:
        first_version, first_variant = anywhere[0]
        return (f"no torch build allowed by env.torch {spec.torch!r} has kernels for this {gpu} ({cap_text}): "
                f"it needs torch >= {first_version} ({first_variant} or newer); widen env.torch in the manifest")
    return (f"no torch build in torch_builds.yaml runs on this {gpu} ({cap_text}) with this driver "
            f"({facts.driver_version}): update the NVIDIA driver")


# ---------------------------------------------------------------------------------------------------------
# Precision and memory.


@dataclass(frozen=True)
class PrecisionChoice:
    """The chosen weights dtype and quantization, what it needs and what the device offers (GB, 1e9 bytes)."""

    dtype: str
    quantization: str | None
    needed_gb: float
    available_gb: float
    fits: bool
    #: GPUs the model is spread over (device_map="auto" when more than one); 0 on MPS and CPU.
    gpus: int = 0
    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)


def _mib_to_gb(mib: int) -> float:
    return mib * 2**20 / GB


def gpu_usable_gb(gpu: Gpu) -> float:
    """Memory of one GPU left for weights after the CUDA context (GB)."""
    return max(_mib_to_gb(gpu.memory_mib) - CUDA_CONTEXT_GB, 0.0)


def mps_usable_gb(ram_bytes: int) -> float:
    """Unified memory Metal lets the GPU use (its recommended working set), in GB."""
    ram = ram_bytes / GB
    return ram * (MPS_SHARE_LARGE if ram > MPS_LARGE_RAM_GB else MPS_SHARE_SMALL)


def _with_headroom(figure: float) -> float:
    return round(figure * (1 + GPU_HEADROOM), 2)


def _sixteen_bit(resources: Resources) -> float | None:
    memory = resources.memory_gb
    return memory.get("bf16") or memory.get("fp16")


def plan_precision(
    facts: HostFacts, resources: Resources, *, quantization_available: bool = True
) -> PrecisionChoice:
    """Choose the first precision of `resources.memory_gb` (in the manifest's order) that fits this host.

    CUDA: bf16 needs compute capability >= 8.0 (a bf16 entry runs as fp16 below that when the manifest lists no
    fp16); int8/int4 need bitsandbytes (`quantization_available`); the weights may be spread over several GPUs with
    device_map="auto" when one is too small. Each figure gets 10% headroom and each GPU loses 1 GB to the CUDA context.
    MPS: 16-bit entries run as fp16 in Metal's working set (about 2/3 to 3/4 of RAM); no bitsandbytes.
    CPU: fp32 (listed, or twice the 16-bit figure) when it fits in 3/4 of RAM, else bf16.
    """
    platform = facts.platform
    if platform == "cuda":
        return _plan_cuda_precision(facts, resources, quantization_available=quantization_available)
    if platform == "mps":
        return _plan_mps_precision(facts, resources)
    return _plan_cpu_precision(facts, resources)


def _plan_cuda_precision(facts: HostFacts, resources: Resources, *, quantization_available: bool) -> PrecisionChoice:
    warnings: list[str] = []
    caps = [c for c in (_capability(g) for g in facts.gpus) if c is not None]
    bf16_ok = bool(caps) and min(caps) >= (8, 0)
    if not caps:
        warnings.append("compute capability unknown: bf16 is not assumed; fp16 is used instead")
    usable = sorted((gpu_usable_gb(g) for g in facts.gpus), reverse=True)
    best_one, total = usable[0], sum(usable)
    names = _gpu_names(facts)
    memory = resources.memory_gb
    skipped_quant: list[str] = []
    for precision, figure in memory.items():
        dtype, quant = precision, None
        if precision == "bf16" and not bf16_ok:
            if "fp16" in memory:
                continue
            dtype = "fp16"
        if precision in ("int8", "int4"):
            if not quantization_available:
                skipped_quant.append(precision)
                continue
            dtype, quant = ("bf16" if bf16_ok else "fp16"), precision
        needed = _with_headroom(figure)
        if needed <= total and dtype == "fp16" and precision == "bf16":
            warnings.append("this GPU has no bf16 (compute capability < 8.0): the bf16 weights run as fp16, "
                            "which can overflow in some models")
        if needed <= best_one:
            return PrecisionChoice(dtype, quant, needed, round(best_one, 2), True, gpus=1, warnings=warnings)
        if len(usable) > 1 and needed <= total:
            count = next(n for n in range(2, len(usable) + 1) if needed <= sum(usable[:n]))
            warnings.append(f"the weights are spread over {count} GPUs with device_map=\"auto\"")
            return PrecisionChoice(dtype, quant, needed, round(sum(usable[:count]), 2), True, gpus=count,
                                   warnings=warnings)
    if skipped_quant:
        warnings.append(f"{'/'.join(skipped_quant)} skipped: the manifest does not install bitsandbytes on CUDA")
    first, figure = next(iter(memory.items()))
    dtype = "fp16" if first == "bf16" and not bf16_ok else first
    smallest_p, smallest = min(memory.items(), key=lambda kv: kv[1])
    needed = _with_headroom(figure)
    want = math.ceil(_with_headroom(smallest) + CUDA_CONTEXT_GB)
    shown = dtype if first in ("bf16", "fp16") else first
    refusal = (f"needs {needed:g} GB at {shown} ({figure:g} GB + 10%); this host's {names} has "
               f"{total:.1f} GB usable: use a GPU with at least {want} GB"
               + (f" (enough for {smallest_p})" if smallest_p != first else "")
               + _quant_hint(memory, skipped_quant))
    quant = first if first in ("int8", "int4") else None
    return PrecisionChoice("bf16" if quant and bf16_ok else ("fp16" if quant else dtype), quant, needed,
                           round(total, 2), False, gpus=len(usable), refusal=refusal, warnings=warnings)


def _quant_hint(memory: Mapping[str, float], skipped: list[str]) -> str:
    return "".join(f", or install bitsandbytes for {p} ({memory[p]:g} GB)" for p in skipped)


def _gpu_names(facts: HostFacts) -> str:
    names = [g.name for g in facts.gpus]
    if len(set(names)) == 1 and len(names) > 1:
        return f"{len(names)}x {names[0]}"
    return " + ".join(names)


def _plan_mps_precision(facts: HostFacts, resources: Resources) -> PrecisionChoice:
    warnings: list[str] = []
    memory = resources.memory_gb
    usable = mps_usable_gb(facts.ram_bytes)
    available = round(usable, 2)
    options: list[tuple[str, float]] = []
    for precision, figure in memory.items():
        if precision in ("bf16", "fp16") and all(p != "fp16" for p, _ in options):
            options.append(("fp16", figure))
        elif precision == "fp32":
            options.append(("fp32", figure))
    for dtype, figure in options:
        needed = _with_headroom(figure)
        if needed <= available:
            return PrecisionChoice(dtype, None, needed, available, True, warnings=warnings)
    chip = facts.apple_chip or "Mac"
    ram = facts.ram_bytes / GB
    quant = [p for p in memory if p in ("int8", "int4")]
    if options:
        dtype, figure = options[0]
        needed = _with_headroom(figure)
        want = math.ceil(needed / MPS_SHARE_LARGE)
        refusal = (f"needs {needed:g} GB at {dtype} ({figure:g} GB + 10%); this {chip} lets the GPU use "
                   f"{usable:.1f} GB of its {ram:.0f} GB: use a Mac with at least {want} GB"
                   + (f", or a CUDA GPU with {'/'.join(quant)} (bitsandbytes is CUDA-only)" if quant else ""))
        return PrecisionChoice(dtype, None, needed, available, False, refusal=refusal, warnings=warnings)
    refusal = (f"the manifest lists only {'/'.join(memory)} figures, which need bitsandbytes (CUDA-only); "
               "add an fp16 figure or use a CUDA GPU")
    return PrecisionChoice("fp16", None, 0.0, available, False, refusal=refusal, warnings=warnings)


def _plan_cpu_precision(facts: HostFacts, resources: Resources) -> PrecisionChoice:
    memory = resources.memory_gb
    sixteen = _sixteen_bit(resources)
    usable = facts.ram_bytes / GB * CPU_SHARE
    available = round(usable, 2)
    options: list[tuple[str, float]] = []
    fp32 = memory.get("fp32") or (2 * sixteen if sixteen else None)
    if fp32:
        options.append(("fp32", fp32))
    if sixteen:
        options.append(("bf16", sixteen))
    for dtype, figure in options:
        needed = _with_headroom(figure)
        if needed <= available:
            return PrecisionChoice(dtype, None, needed, available, True)
    ram = facts.ram_bytes / GB
    if not options:
        return PrecisionChoice("fp32", None, 0.0, available, False, refusal=(
            f"the manifest lists only {'/'.join(memory)} figures, which need bitsandbytes (CUDA-only); "
            "a CPU host needs an fp32, bf16 or fp16 figure"))
    dtype, figure = options[-1]
    needed = _with_headroom(figure)
    want = math.ceil(needed / CPU_SHARE)
    return PrecisionChoice(dtype, None, needed, available, False, refusal=(
        f"needs {needed:g} GB of RAM at {dtype} ({figure:g} GB + 10%); this CPU-only host has {ram:.0f} GB "
        f"({usable:.1f} GB usable): use a host with at least {want} GB of RAM or a GPU"))


# ---------------------------------------------------------------------------------------------------------
# Disk.


@dataclass(frozen=True)
class DiskPlan:
    """Bytes to download and bytes the whole job writes (downloads, conversion outputs, headroom)."""

    download_bytes: int
    convert_bytes: int
    needed_bytes: int
    #: What writing the outputs of fused steps too (`keep: true`, --keep-intermediates) would add.
    intermediate_bytes: int = 0


def _sixteen_bit_gb(manifest: Manifest) -> float:
    return _sixteen_bit(manifest.resources) or manifest.resources.params_b * 2


def _own_sizes(manifest: Manifest) -> tuple[float, float, float]:
    """(download GB, conversion output GB, fused-away intermediates GB) of one manifest, without its model
    dependencies. Steps that run fused (`convert.fusion.group_steps`) write only their last step's output."""
    download = sum(s.size_gb or 0.0 for s in manifest.weights.values() if s.hubs)
    converted = intermediates = 0.0
    for group in group_steps(manifest):
        sizes = [_STEP_SIZE_FACTOR.get(step.kind, 1.0) * _sixteen_bit_gb(manifest) for step in group]
        converted += sizes[-1]
        intermediates += sum(sizes[:-1])
    return download, converted, intermediates


def plan_disk(
    manifest: Manifest, *, manifests: Mapping[str, Manifest] | None = None, built: Collection[str] = ()
) -> DiskPlan:
    """Download and disk needs of a model and of the `model:` dependencies not yet built.

    Downloads come from each hub source's `size_gb`; each conversion pass writes about the model's 16-bit size
    (twice that for tf_to_pt), a fused chain of steps only its final output. `resources.disk_gb`, when given,
    replaces the computed total of the model itself. 10% plus 2 GB is added for caches and temporary files.
    """
    manifests = manifests or {}
    download, converted, intermediates = _own_sizes(manifest)
    own_total = manifest.resources.disk_gb or (download + converted)
    for dep in _dependencies(manifest, manifests):
        if dep.id in built:
            continue
        dep_download, dep_converted, dep_intermediates = _own_sizes(dep)
        download += dep_download
        converted += dep_converted
        intermediates += dep_intermediates
        own_total += dep.resources.disk_gb or (dep_download + dep_converted)
    needed = own_total * (1 + DISK_HEADROOM) + DISK_RESERVE_GB
    return DiskPlan(download_bytes=int(download * GB), convert_bytes=int(converted * GB),
                    needed_bytes=int(needed * GB), intermediate_bytes=int(intermediates * GB))


def _dependencies(manifest: Manifest, manifests: Mapping[str, Manifest]) -> list[Manifest]:
    """Manifests this one needs built first (`model:` sources), dependencies of dependencies first."""
    out: list[Manifest] = []
    for source in manifest.weights.values():
        if source.model is None:
            continue
        dep = manifests.get(source.model)
        if dep is None:
            raise HostCannotRunError(f"{manifest.id} needs model {source.model!r}, whose manifest was not given")
        for sub in _dependencies(dep, manifests):
            if sub.id not in {m.id for m in out}:
                out.append(sub)
        if dep.id not in {m.id for m in out}:
            out.append(dep)
    return out


# ---------------------------------------------------------------------------------------------------------
# The whole plan.


def _env_plan(manifest: Manifest, platform: str, torch: TorchBuild) -> EnvPlan:
    spec = manifest.env
    extras = spec.platform.get(platform)  # type: ignore[call-overload]
    packages = list(spec.packages) + (list(extras.packages) if extras else [])
    env_vars = {**spec.env, **(extras.env if extras else {})}
    tokenizers = spec.tokenizers.model_dump(exclude_none=True) if spec.tokenizers else None
    return EnvPlan(python=spec.python, torch=torch, packages=packages, tokenizers=tokenizers, env_vars=env_vars)


def _has_bitsandbytes(manifest: Manifest) -> bool:
    cuda = manifest.env.platform.get("cuda")
    packages = list(manifest.env.packages) + (list(cuda.packages) if cuda else [])
    return any(Requirement(p).name.lower() == "bitsandbytes" for p in packages)


def _fetch_steps(manifest: Manifest, *, prefix: str = "") -> list[dict[str, str]]:
    steps = []
    for name, source in manifest.weights.items():
        if source.hubs:
            hub, ref = source.hubs[0]
            pin = "" if ref.pinned else " (a moving ref: fetch resolves it to a commit and names it to pin)"
            size = f", {source.size_gb:g} GB" if source.size_gb else ""
            others = [h for h, _ in source.hubs[1:]]
            alt = f"; also on {', '.join(others)}" if others else ""
            text = f"{name}: {hub} {ref.repo}@{ref.revision}{pin}{size}{alt}"
        elif source.local is not None:
            text = f"{name}: local weights from host config local.{source.local.var} ({source.format})"
        else:
            text = f"{name}: the output of model {source.model}"
        steps.append({"stage": "fetch", "model": manifest.id, "description": prefix + text})
    return steps


def _convert_steps(manifest: Manifest) -> list[dict[str, str]]:
    steps = []
    fused = {id(step): group for group in group_steps(manifest) if len(group) > 1 for step in group}
    for step in manifest.convert:
        inputs = ", ".join(step.inputs) or "previous output"
        extra = f" ({step.convention} convention)" if step.kind == "apply_delta" else ""  # type: ignore[union-attr]
        group = fused.get(id(step))
        if group is not None and step is group[-1]:
            size = sum(_STEP_SIZE_FACTOR.get(s.kind, 1.0) * _sixteen_bit_gb(manifest) for s in group[:-1])
            kept = ", ".join(s.output_name for s in group[:-1])
            extra += (f"; fused with the steps before it into one pass: {kept} not written (`keep: true` or "
                      f"--keep-intermediates writes {kept}: {size:.0f} GB more disk)")
        elif group is not None:
            extra += "; read directly by the next step, not written"
        steps.append({"stage": "convert", "model": manifest.id,
                      "description": f"{step.kind}: {inputs} -> {step.output_name}{extra}"})
    return steps


def make_plan(
    manifest: Manifest, facts: HostFacts, config: HostConfig | None = None, *,
    manifests: Mapping[str, Manifest] | None = None, built: Collection[str] = (), table: TorchTable | None = None,
) -> Plan:
    """Plan `manifest` on the host described by `facts`: a pure function of its arguments and the torch table.

    `manifests` maps ids to the manifests of `model:` dependencies (and theirs); `built` names dependencies whose
    outputs already exist, so their downloads and conversions are not counted. A host that cannot run the model
    gets a plan with `fits=False` and a `refusal` saying why and what would work; nothing raises for that.
    """
    config = config or HostConfig()
    manifests = dict(manifests or {})
    platform = facts.platform
    warnings: list[str] = []
    refusals: list[str] = []
    try:
        torch = plan_torch_build(facts, manifest.env, config=config, table=table, warnings=warnings)
    except HostCannotRunError as exc:
        refusals.append(str(exc))
        torch = TorchBuild(version="", variant="none", index_url=None, requirements=[])
    precision = plan_precision(facts, manifest.resources, quantization_available=_has_bitsandbytes(manifest))
    warnings.extend(precision.warnings)
    if not precision.fits and precision.refusal:
        refusals.append(precision.refusal)
    deps = _dependencies(manifest, manifests)
    disk = plan_disk(manifest, manifests=manifests, built=built)
    if disk.needed_bytes > facts.disk_free_bytes:
        refusals.append(
            f"needs {format_size(disk.needed_bytes)} of disk under {facts.data_root} (downloads "
            f"{format_size(disk.download_bytes)}, conversions {format_size(disk.convert_bytes)}, +10% and 2 GB); "
            f"only {format_size(facts.disk_free_bytes)} free: free space or use a data root on a bigger disk")
    convert_ram = max((m.resources.convert_ram_gb or 0.0 for m in [manifest, *deps]
                       if m.convert and m.id not in built), default=0.0)
    if convert_ram and convert_ram * GB > facts.ram_bytes:
        refusals.append(f"the conversions need {convert_ram:g} GB of RAM; this host has "
                        f"{format_size(facts.ram_bytes)}: convert on a bigger host and copy the output, or add RAM")
    env = _env_plan(manifest, platform, torch)
    launch = [e for e in manifest.launch if platform in e.allowed_platforms]
    skipped = [e.name for e in manifest.launch if e not in launch]
    if skipped:
        warnings.append(f"launch entries not for {platform} hosts: {', '.join(skipped)}")

    steps: list[dict[str, str]] = []
    torch_text = (f"torch {torch.version} ({torch.variant}" + (f" from {torch.index_url})" if torch.index_url
                                                               else ", default index)")
                  if torch.version else "no usable torch build")
    steps.append({"stage": "env", "model": manifest.id,
                  "description": f"Python {env.python}, {torch_text}, {len(env.packages)} packages"})
    for dep in deps:
        if dep.id in built:
            steps.append({"stage": "fetch", "model": dep.id, "description": f"{dep.id}: already built, reused"})
            continue
        steps.extend(_fetch_steps(dep))
    steps.extend(_fetch_steps(manifest))
    for dep in deps:
        if dep.id not in built:
            steps.extend(_convert_steps(dep))
    steps.extend(_convert_steps(manifest))
    for entry in launch:
        port = f", port {entry.port}" if entry.port else ""
        steps.append({"stage": "render", "model": manifest.id,
                      "description": f"{entry.name}: {entry.kind}" + (f" ({entry.adapter})" if entry.adapter else "")
                      + port})
    for entry in launch:
        steps.append({"stage": "launch", "model": manifest.id, "description": f"start {entry.name} and check health"})

    device = {"cuda": "cuda", "mps": "mps"}.get(platform, "cpu")
    return Plan(
        model=manifest.id, platform=platform, device=device, dtype=precision.dtype,
        quantization=precision.quantization, memory_needed_gb=precision.needed_gb,
        memory_available_gb=precision.available_gb, env=env, download_bytes=disk.download_bytes,
        disk_needed_bytes=disk.needed_bytes, disk_free_bytes=facts.disk_free_bytes, steps=steps,
        launch=[e.name for e in launch], fits=not refusals, refusal="; ".join(refusals) or None,
        warnings=_unique(warnings), gpus=precision.gpus, dependencies=[d.id for d in deps],
    )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
