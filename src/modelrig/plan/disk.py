"""Disk a plan needs: downloads, conversion outputs (a fused chain writes only its final output), headroom."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from modelrig.errors import HostCannotRunError
from modelrig.manifest import Manifest
from modelrig.plan.precision import GB, sixteen_bit_memory_gb
from modelrig.plan.steps import group_steps, prunable_sources

#: Disk kept free beyond what the plan writes: 10% plus 2 GB for caches and temporary files.
DISK_HEADROOM = 0.10
DISK_RESERVE_GB = 2.0
#: Output size of a conversion step relative to the 16-bit model size (tf_to_pt writes fp32).
STEP_SIZE_FACTOR = {"llama_meta_to_hf": 1.0, "apply_delta": 1.0, "to_safetensors": 1.0, "tf_to_pt": 2.0}

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
    #: Downloads `--prune-sources` deletes once the conversions that read them are done (the peak is unchanged).
    prunable_bytes: int = 0
    #: Downloads and conversion outputs of the plan already on the data root (not in the figures above).
    present_bytes: int = 0


def model_size_gb(manifest: Manifest) -> float:
    return sixteen_bit_memory_gb(manifest.resources) or manifest.resources.params_b * 2


def _own_sizes(manifest: Manifest, present: Collection[str] = ()) -> tuple[float, float, float, float]:
    """(download GB, conversion output GB, fused-away intermediates GB, GB already there) of one manifest,
    without its model dependencies. Steps that run fused (`plan.steps.group_steps`) write only their last step's
    output. Sources and outputs named in `present` are already on disk: they count only in the last figure."""
    download = there = 0.0
    for name, source in manifest.weights.items():
        if source.hubs:
            if name in present:
                there += source.size_gb or 0.0
            else:
                download += source.size_gb or 0.0
    converted = intermediates = 0.0
    for group in group_steps(manifest):
        sizes = [STEP_SIZE_FACTOR.get(step.kind, 1.0) * model_size_gb(manifest) for step in group]
        if group[-1].output_name in present:
            there += sizes[-1]
            continue
        converted += sizes[-1]
        intermediates += sum(sizes[:-1])
    return download, converted, intermediates, there


def plan_disk(
    manifest: Manifest, *, manifests: Mapping[str, Manifest] | None = None, built: Collection[str] = (),
    present: Collection[str] = (),
) -> DiskPlan:
    """Download and disk needs of a model and of the `model:` dependencies not yet built.

    Downloads come from each hub source's `size_gb`; each conversion pass writes about the model's 16-bit size
    (twice that for tf_to_pt), a fused chain of steps only its final output. `resources.disk_gb`, when given,
    replaces the computed total of the model itself. `present` names the model's weight sources already fetched
    and step outputs already built: they take no more disk (a re-run on a host filled by the first run still
    fits). 10% plus 2 GB is added for caches and temporary files.
    """
    manifests = manifests or {}
    download, converted, intermediates, there = _own_sizes(manifest, present)
    prunable = _prunable_gb(manifest)
    own_total = download + converted
    if manifest.resources.disk_gb:
        own_total = max(0.0, manifest.resources.disk_gb - there)
    for dep in dependency_chain(manifest, manifests):
        if dep.id in built:
            continue
        dep_download, dep_converted, dep_intermediates, _ = _own_sizes(dep)
        download += dep_download
        converted += dep_converted
        intermediates += dep_intermediates
        prunable += _prunable_gb(dep)
        own_total += dep.resources.disk_gb or (dep_download + dep_converted)
    needed = own_total * (1 + DISK_HEADROOM) + DISK_RESERVE_GB
    return DiskPlan(download_bytes=int(download * GB), convert_bytes=int(converted * GB),
                    needed_bytes=int(needed * GB), intermediate_bytes=int(intermediates * GB),
                    prunable_bytes=int(prunable * GB), present_bytes=int(there * GB))


def _prunable_gb(manifest: Manifest) -> float:
    """Download GB of the sources `--prune-sources` would delete after conversion (`steps.prunable_sources`)."""
    return sum(manifest.weights[name].size_gb or 0.0 for name in prunable_sources(manifest))


def dependency_chain(manifest: Manifest, manifests: Mapping[str, Manifest]) -> list[Manifest]:
    """Manifests this one needs built first (`model:` sources), dependencies of dependencies first."""
    out: list[Manifest] = []
    for source in manifest.weights.values():
        if source.model is None:
            continue
        dep = manifests.get(source.model)
        if dep is None:
            raise HostCannotRunError(f"{manifest.id} needs model {source.model!r}, whose manifest was not given")
        for sub in dependency_chain(dep, manifests):
            if sub.id not in {m.id for m in out}:
                out.append(sub)
        if dep.id not in {m.id for m in out}:
            out.append(dep)
    return out


