"""Fused conversion chains: consecutive steps that feed each other run as one streaming pass with one stamp.

`llama_meta_to_hf -> apply_delta -> to_safetensors` (or any run of these where each step reads the previous
step's output and nothing else does) reads every output tensor from the first step's inputs, computes it through
the chain row chunk by row chunk, and writes it straight into the last step's safetensors shards: the
intermediate folders are never written, and the final files are byte for byte those of the step-by-step run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrig.convert.delta import merged_product
from modelrig.convert.llama_meta import meta_product, meta_sources
from modelrig.convert.product import Product, write_product
from modelrig.convert.safetensors_convert import safetensors_product
from modelrig.convert.step import run_step
from modelrig.manifest import ApplyDelta, ConvertStep, LlamaMetaToHf, ToSafetensors
from modelrig.result import StageResult

#: Shard size of the steps that take none from the manifest.
DEFAULT_SHARD = "5GB"


@dataclass
class _Link:
    """One step of a chain: its stamp parameters, its inputs on disk, and how it makes its product."""

    kind: str
    params: dict[str, Any]
    sources: dict[str, Path]
    make: Callable[[Product | None], Product]
    max_shard_size: str


def _link(step: ConvertStep, where: Callable[[str | None], Path], first: bool) -> _Link:
    """How a manifest step runs inside a chain; `first` steps read their inputs from disk."""
    if isinstance(step, LlamaMetaToHf):
        src = where(step.input)
        params = {"size": step.size, "llama_version": "1", "max_shard_size": DEFAULT_SHARD}
        return _Link("llama-meta", params, meta_sources(src, size=step.size),
                     lambda _prev: meta_product(src, size=step.size), DEFAULT_SHARD)
    if isinstance(step, ApplyDelta):
        params = {"convention": step.convention, "max_shard_size": DEFAULT_SHARD, "check": True}
        base = where(step.base) if first else None
        delta = where(step.delta)
        sources = {"delta": delta} if base is None else {"base": base, "delta": delta}

        def merge(prev: Product | None) -> Product:
            b = prev if prev is not None else Product.from_disk(base)  # type: ignore[arg-type]
            return merged_product(b, Product.from_disk(delta), convention=step.convention)
        return _Link("delta", params, sources, merge, DEFAULT_SHARD)
    assert isinstance(step, ToSafetensors)
    params = {"max_shard_size": step.max_shard_size, "allow_unsafe_pickle": step.allow_unsafe_pickle}
    src = where(step.input) if first else None
    return _Link("safetensors", params, {} if src is None else {"source": src},
                 lambda prev: safetensors_product(prev if prev is not None else src,  # type: ignore[arg-type]
                                                  allow_unsafe_pickle=step.allow_unsafe_pickle),
                 step.max_shard_size)


def run_chain(steps: list[ConvertStep], *, out: Path, where: Callable[[str | None], Path],
              cache: Path | None = None, model: str | None = None) -> StageResult:
    """Run `steps` (each reading the previous one's output) as one pass into `out`, the last step's folder.

    One stamp names every step's kind, output name and parameters and the digests of the chain's inputs on
    disk; like a single step it is idempotent (unchanged when that stamp matches), atomic (a temporary sibling
    renamed at the end) and checks free disk for the final output only.
    """
    links = [_link(step, where, i == 0) for i, step in enumerate(steps)]
    kind = "+".join(link.kind for link in links)
    params = {"steps": [{"kind": link.kind, "output": step.output_name, **link.params}
                        for link, step in zip(links, steps, strict=True)]}
    sources = {f"{step.output_name}.{role}": path for link, step in zip(links, steps, strict=True)
               for role, path in link.sources.items()}
    state: dict[str, Product] = {}

    def needed() -> int:
        product: Product | None = None
        for link in links:
            product = link.make(product)
        assert product is not None
        state["product"] = product
        return product.nbytes

    def body(tmp: Path) -> dict[str, Any]:
        product = state["product"]
        files, copied = write_product(product, tmp, max_shard_size=links[-1].max_shard_size, desc=kind)
        chain = " -> ".join(step.output_name for step in steps)
        return {"files": files, "copied": copied, "tensors": len(product.tensors),
                "fused": [step.kind for step in steps],
                "summary": f"{kind}: {chain} in one pass, {len(product.tensors)} tensors -> {out}"}

    return run_step(kind, out=out, params=params, sources=sources, needed_bytes=needed, body=body, cache=cache,
                    model=model)
