"""Precision and quantization that fit a host's GPU memory, unified memory or RAM."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelrig.facts import Gpu, HostFacts
from modelrig.humansize import format_memory
from modelrig.manifest import Resources
from modelrig.plan.torch import gpu_capability

#: Share of each GPU's memory kept free for fragmentation, activations and the KV cache.
GPU_HEADROOM = 0.10
#: Memory the CUDA context and kernels take on each GPU, in GB.
CUDA_CONTEXT_GB = 1.0
#: Metal's recommended working set is about 2/3 of RAM on Macs with up to 36 GB and about 3/4 above that.
MPS_SHARE_SMALL = 2 / 3
MPS_SHARE_LARGE = 0.75
MPS_LARGE_RAM_GB = 36.0
#: The unified memory sizes Apple sells Macs with, in GiB (Apple says "GB" for these binary sizes).
MAC_MEMORY_GIB = (8, 16, 18, 24, 32, 36, 48, 64, 96, 128, 192, 256, 512)
#: Share of RAM a CPU-only host gives to the weights; the rest is the OS, the Python process and the loading peak.
CPU_SHARE = 0.75

GB = 1e9

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


def smallest_mac_gib(needed_gb: float) -> int | None:
    """The smallest Mac memory size (GiB) whose Metal working set holds `needed_gb`; None when none does."""
    return next((gib for gib in MAC_MEMORY_GIB if mps_usable_gb(gib * 2**30) >= needed_gb), None)


def _with_headroom(figure: float) -> float:
    return round(figure * (1 + GPU_HEADROOM), 2)


def sixteen_bit_memory_gb(resources: Resources) -> float | None:
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
    caps = [c for c in (gpu_capability(g) for g in facts.gpus) if c is not None]
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
    quant = [p for p in memory if p in ("int8", "int4")]
    if options:
        dtype, figure = options[0]
        needed = _with_headroom(figure)
        want = smallest_mac_gib(needed)
        advice = f"use a Mac with {want} GiB of memory or more" if want else "no Mac has enough memory"
        refusal = (f"needs {needed:g} GB at {dtype} ({figure:g} GB + 10%); this {chip} lets the GPU use "
                   f"{usable:.1f} GB of its {format_memory(facts.ram_bytes)} ({facts.ram_bytes / GB:.1f} GB): "
                   f"{advice}"
                   + (f", or a CUDA GPU with {'/'.join(quant)} (bitsandbytes is CUDA-only)" if quant else ""))
        return PrecisionChoice(dtype, None, needed, available, False, refusal=refusal, warnings=warnings)
    refusal = (f"the manifest lists only {'/'.join(memory)} figures, which need bitsandbytes (CUDA-only); "
               "add an fp16 figure or use a CUDA GPU")
    return PrecisionChoice("fp16", None, 0.0, available, False, refusal=refusal, warnings=warnings)


def _plan_cpu_precision(facts: HostFacts, resources: Resources) -> PrecisionChoice:
    memory = resources.memory_gb
    sixteen = sixteen_bit_memory_gb(resources)
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
    if not options:
        return PrecisionChoice("fp32", None, 0.0, available, False, refusal=(
            f"the manifest lists only {'/'.join(memory)} figures, which need bitsandbytes (CUDA-only); "
            "a CPU host needs an fp32, bf16 or fp16 figure"))
    dtype, figure = options[-1]
    needed = _with_headroom(figure)
    want = math.ceil(needed / CPU_SHARE * GB / 2**30)
    return PrecisionChoice(dtype, None, needed, available, False, refusal=(
        f"needs {needed:g} GB of RAM at {dtype} ({figure:g} GB + 10%); this CPU-only host has "
        f"{format_memory(facts.ram_bytes)} ({usable:.1f} GB usable): use a host with at least {want} GiB of RAM "
        "or a GPU"))


