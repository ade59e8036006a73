"""The torch build for a host: the table of releases (CUDA variants, architectures, driver minimums) and the choice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from modelrig.config import HostConfig
from modelrig.errors import HostCannotRunError
from modelrig.facts import Gpu, HostFacts
from modelrig.manifest import EnvSpec
from modelrig.plan.model import TorchBuild

TORCH_BUILDS_FILE = Path(__file__).resolve().parent.parent / "data" / "torch_builds.yaml"

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
    """Read and parse the torch build table (cached; libyaml's parser where PyYAML has it: 10x faster on the shipped
    table, and the same data)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return parse_torch_table(yaml.load(path.read_text(encoding="utf-8"), Loader=loader))


# ---------------------------------------------------------------------------------------------------------
# Torch build.


def gpu_capability(gpu: Gpu) -> tuple[int, int] | None:
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
    caps = [c for c in (gpu_capability(g) for g in facts.gpus) if c is not None]
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


