"""A step's output before it is written: tensors read by rows plus a writer of its other files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelrig.convert.io import RowSource, one_torch_thread, open_inputs
from modelrig.convert.readers import ModelReader, copy_extra_files
from modelrig.convert.shards import chunked_outputs, write_safetensors_shards


@dataclass
class Product:
    """What a conversion step makes: its tensors (read by rows on demand) and its config/tokenizer files.

    A step reads its inputs as products, so a step can consume the previous step's product directly (a fused
    chain) or a finished folder on disk, and give the same tensors either way.
    """

    tensors: list[RowSource]
    #: Writes the non-weight files (config, tokenizer, ...) into a folder; returns their names.
    write_extras: Callable[[Path], list[str]]
    #: safetensors `__metadata__` entries besides `format: pt`.
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_disk(cls, source: Path, *, allow_unsafe_pickle: bool = False) -> Product:
        """The tensors of a model folder or weight file and (for a folder) its config and tokenizer files."""
        source = Path(source)
        reader = ModelReader.open(source, allow_unsafe_pickle=allow_unsafe_pickle)
        return cls(list(reader.tensors.values()), lambda dest: copy_extra_files(source, dest))

    def by_name(self) -> dict[str, RowSource]:
        """The tensors by name."""
        return {t.name: t for t in self.tensors}

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        total = 0
        for t in self.tensors:
            n = t.dtype.itemsize
            for d in t.shape:
                n *= d
            total += n
        return total


def write_product(product: Product, dest: Path, *, max_shard_size: int | str, desc: str) -> tuple[dict[str, str],
                                                                                                    list[str]]:
    """Write a product's tensors as safetensors shards and its other files into `dest`.

    Returns (weight file name -> sha256, names of the other files).
    """
    with one_torch_thread(), open_inputs():
        files = write_safetensors_shards(chunked_outputs(product.tensors), dest, max_shard_size=max_shard_size,
                                         metadata=product.metadata, desc=desc)
    return files, product.write_extras(dest)
