"""Pickle `.bin` checkpoints (sharded or not) to safetensors shards + index, tied tensors de-duplicated."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from modelrig.convert.io import LazyTensor
from modelrig.convert.product import Product, write_product
from modelrig.convert.readers import ModelReader, copy_extra_files
from modelrig.convert.step import run_step
from modelrig.result import StageResult

#: Name fragments of tensors that are usually the tied copy (dropped in favour of the other alias).
TIED_COPY_HINTS = ("lm_head", "decoder", "output_embeddings")


def _region(t: LazyTensor) -> tuple[Any, ...]:
    return (t.path, t.storage_key, t.offset, t.shape, t.stride, t.dtype)


def dedupe_aliases(tensors: dict[str, LazyTensor]) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """Keep one name per identical view of a storage (tied weights); return (kept tensors, removed -> kept).

    Like safetensors' `convert.py`: names that are usually the tied copy (`lm_head`, `decoder`) are dropped
    first, otherwise the alphabetically first name is kept. Distinct views of one storage (Meta's layer
    buffers) are separate tensors and are all kept, each written as its own data.
    """
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for name, t in tensors.items():
        groups[_region(t)].append(name)
    kept: dict[str, LazyTensor] = {}
    removed: dict[str, str] = {}
    for names in groups.values():
        names.sort(key=lambda n: (any(h in n for h in TIED_COPY_HINTS), n))
        kept[names[0]] = tensors[names[0]]
        for alias in names[1:]:
            removed[alias] = names[0]
    return dict(sorted(kept.items())), dict(sorted(removed.items()))


def safetensors_product(source: Path | Product, *, allow_unsafe_pickle: bool = False) -> Product:
    """The tensors a `to_safetensors` step writes: a folder's or file's tensors with tied aliases kept once (the
    dropped names recorded in the metadata), or a previous step's product as it is (it has no aliases)."""
    if isinstance(source, Product):
        return source
    source = Path(source)
    reader = ModelReader.open(source, allow_unsafe_pickle=allow_unsafe_pickle)
    kept, removed = dedupe_aliases(reader.tensors)
    return Product(list(kept.values()), lambda dest: copy_extra_files(source, dest), metadata=removed)


def convert_to_safetensors(*, source: Path, out: Path, max_shard_size: int | str = "5GB",
                           allow_unsafe_pickle: bool = False, cache: Path | None = None,
                           model: str | None = None) -> StageResult:
    """Convert a `.bin` model (file or folder, sharded or not) to safetensors shards next to its other files.

    Pickles are opened with torch's `weights_only=True` unpickler; one needing arbitrary globals is refused
    unless `allow_unsafe_pickle` (which prints a warning). The lazy reader is checked against torch's own
    unpickler on every tensor's first and last bytes; each written shard is reopened with safetensors' reader
    (header, names, shapes, dtypes) and its data is known by the sha256 of the bytes written.
    """
    source, out = Path(source), Path(out)
    params = {"max_shard_size": str(max_shard_size), "allow_unsafe_pickle": allow_unsafe_pickle}
    if allow_unsafe_pickle:
        print(f"modelrig: warning: --allow-unsafe-pickle: {source} will be fully unpickled; a malicious file can "
              "run any code as this user", file=sys.stderr)
    state: dict[str, Product] = {}

    def needed() -> int:
        state["product"] = safetensors_product(source, allow_unsafe_pickle=allow_unsafe_pickle)
        return state["product"].nbytes

    def body(tmp: Path) -> dict[str, Any]:
        product = state["product"]
        files, copied = write_product(product, tmp, max_shard_size=max_shard_size, desc="safetensors")
        removed = product.metadata
        return {"files": files, "copied": copied, "tensors": len(product.tensors), "aliases_dropped": removed,
                "summary": f"safetensors: {len(product.tensors)} tensors ({len(removed)} tied aliases dropped) "
                           f"-> {out}"}

    return run_step("safetensors", out=out, params=params, sources={"source": source}, needed_bytes=needed,
                    body=body, cache=cache, model=model)
