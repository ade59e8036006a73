"""Writing safetensors shards: planned by huggingface_hub's splitter, streamed in chunks, hashed as written."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelrig import humansize

#: File names that hold weights (never copied as "extra" files next to converted weights).
from modelrig.convert.io import (
    _ST_NAMES,
    CHUNK_ELEMENTS,
    WRITEBACK_BYTES,
    FileSpan,
    RowSource,
    Writeback,
    copy_span,
    hash_span,
    leading_rows,
    row_numel,
    write_all,
)
from modelrig.errors import ConversionError
from modelrig.progress import bar

#: Bytes per span piece, and per read of the scratch buffers that hash spans (or copy them where the kernel
#: cannot).
SPAN_BYTES = 64 << 20
SPAN_SCRATCH = 8 << 20


@dataclass
class OutputTensor:
    """One tensor of a planned output: its name, shape, dtype and a producer of its data in row order (tensors,
    or spans of an input file holding the bytes verbatim)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], Iterable[torch.Tensor | FileSpan]]

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def parse_size(value: int | str) -> int:
    """`5GB` -> 5_000_000_000 (decimal units, as huggingface_hub counts shard sizes); ints pass through."""
    try:
        return humansize.parse_size(value)
    except ValueError:
        raise ConversionError(f"invalid size {value!r} (use e.g. 5GB or 500MB)") from None


def plan_shards(tensors: list[OutputTensor], *, max_shard_size: int | str) -> dict[str, list[str]]:
    """Shard file name -> tensor names, split by huggingface_hub's own algorithm (on planned sizes, not data)."""
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory({t.name: t for t in tensors}, get_storage_size=lambda t: t.nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=parse_size(max_shard_size))
    return {name: sorted(names) for name, names in split.filename_to_tensors.items()}


def write_safetensors_shards(tensors: list[OutputTensor], out: Path, *, max_shard_size: int | str = "5GB",
                             metadata: dict[str, str] | None = None, desc: str = "write") -> dict[str, str]:
    """Write `tensors` as safetensors shards (+ `model.safetensors.index.json` when sharded) into `out`.

    Each tensor's data is produced and written piece by piece, so memory stays around one tensor (or one
    chunk), never a shard. Headers are computed up front from the planned shapes; output is deterministic
    (tensors sorted by name, fixed metadata). Returns file name -> sha256 of every file written.
    """
    by_name = {t.name: t for t in tensors}
    if len(by_name) != len(tensors):
        raise ConversionError("duplicate output tensor names")
    shards = plan_shards(tensors, max_shard_size=max_shard_size)
    meta = {"format": "pt", **(metadata or {})}
    digests: dict[str, str] = {}
    total = sum(t.nbytes for t in tensors)
    with bar(total, desc) as progress, ThreadPoolExecutor(max_workers=1) as syncer:
        # A finished shard is fsynced (and checked) by another thread while the next one is written.
        finishing = []
        for fname in sorted(shards):
            planned = [by_name[n] for n in shards[fname]]
            digests[fname], fd = _write_one_shard(planned, out / fname, meta, progress)
            finishing.append(syncer.submit(_finish_shard, fd, out / fname, planned))
        for done in finishing:
            done.result()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: f for f, names in shards.items() for n in names}}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (out / "model.safetensors.index.json").write_text(text, encoding="utf-8")
        digests["model.safetensors.index.json"] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def _write_one_shard(tensors: list[OutputTensor], path: Path, metadata: dict[str, str],
                     progress: Any) -> tuple[str, int]:
    """Write one shard; returns its sha256 and its still open descriptor (for `_finish_shard`)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        if t.dtype not in _ST_NAMES:
            raise ConversionError(f"tensor {t.name}: dtype {t.dtype} cannot be stored in safetensors")
        header[t.name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with ThreadPoolExecutor(max_workers=1) as writer, ThreadPoolExecutor(max_workers=1) as hasher:
            _write_pieces(tensors, fd, blob, digest, writer, hasher, progress)
    except BaseException:
        os.close(fd)
        raise
    return digest.hexdigest(), fd


def _finish_shard(fd: int, path: Path, planned: list[OutputTensor]) -> None:
    """fsync and close a written shard (its writeback started while it was written), then check its header."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    check_written_shard(path, planned)


def _write_pieces(tensors: list[OutputTensor], fd: int, blob: bytes, digest: Any, writer: ThreadPoolExecutor,
                  hasher: ThreadPoolExecutor, progress: Any) -> None:
    """Write the header and every tensor's pieces to `fd`, hashing the same bytes into `digest`."""
    # Each piece is written by one thread and hashed by another (both release the GIL) while the next piece
    # is produced; a piece's buffer is reused only after both are done with it. A span of an input file is
    # copied by the kernel and hashed from the input; the writer asks the kernel to start writing each
    # stretch back to disk as soon as it is written.
    scratch = (bytearray(SPAN_SCRATCH), bytearray(SPAN_SCRATCH))
    pending: list[Any] = []
    head = struct.pack("<Q", len(blob)) + blob
    write_all(fd, head)
    digest.update(head)
    writeback = Writeback(fd, len(head))
    for t in tensors:
        written = 0
        for piece in t.produce():
            for done in pending:
                done.result()
            if isinstance(piece, FileSpan):
                pending = [writer.submit(_copy_and_kick, piece, fd, scratch[0], writeback),
                           hasher.submit(hash_span, piece, digest, scratch=scratch[1])]
                size = piece.nbytes
            else:
                if piece.dtype != t.dtype:
                    raise ConversionError(f"tensor {t.name}: produced {piece.dtype}, planned {t.dtype}")
                data = piece.contiguous().reshape(-1).view(torch.uint8).numpy()
                pending = [writer.submit(_write_and_kick, data, fd, writeback),
                           hasher.submit(digest.update, data)]
                size = data.nbytes
            written += size
            progress.update(size)
        if written != t.nbytes:
            raise ConversionError(f"tensor {t.name}: produced {written} bytes, planned {t.nbytes} "
                                  f"(shape {list(t.shape)})")
    for done in pending:
        done.result()


def _copy_and_kick(span: FileSpan, fd: int, scratch: bytearray, writeback: Writeback) -> None:
    for start in range(0, span.nbytes, WRITEBACK_BYTES):
        part = FileSpan(span.path, span.offset + start, min(WRITEBACK_BYTES, span.nbytes - start))
        copy_span(part, fd, scratch=scratch)
        writeback.advance(part.nbytes)


def _write_and_kick(data: Any, fd: int, writeback: Writeback) -> None:
    write_all(fd, data)
    writeback.advance(data.nbytes)


def whole(load: Callable[[], torch.Tensor]) -> Callable[[], Iterator[torch.Tensor]]:
    """A producer yielding one whole tensor."""
    def produce() -> Iterator[torch.Tensor]:
        yield load()
    return produce


class BufferRing:
    """A few reusable chunk buffers handed out in turn, so streaming work does not allocate per chunk.

    With `slots=2` a piece can be written by the writer thread while the next is filled: `write_safetensors_shards`
    waits for a piece to be written before it asks for the one after next.
    """

    def __init__(self, nbytes: int, slots: int = 2) -> None:
        self._buffers = [torch.empty(nbytes, dtype=torch.uint8) for _ in range(slots)]
        self._next = 0

    def take(self) -> torch.Tensor:
        """The next buffer in turn."""
        buf = self._buffers[self._next]
        self._next = (self._next + 1) % len(self._buffers)
        return buf


def row_chunks(rows: int, row_elements: int, *, align: int = 1) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about `CHUNK_ELEMENTS` elements each, in multiples of `align` rows."""
    step = max(align, CHUNK_ELEMENTS // max(1, row_elements) // align * align)
    for start in range(0, max(rows, 1), step):
        yield start, min(rows, start + step)


def chunked_outputs(sources: Iterable[RowSource]) -> list[OutputTensor]:
    """Output tensors whose data is read from `sources` in row chunks into two reused buffers, or, for a tensor
    stored verbatim in an input file, given as spans of that file (copied by the kernel).

    Memory stays around two chunks however large a tensor is; a 0-d tensor is one piece.
    """
    ring = BufferRing(CHUNK_ELEMENTS * 8 + (64 << 10))

    def producer(src: RowSource) -> Callable[[], Iterator[torch.Tensor | FileSpan]]:
        def produce() -> Iterator[torch.Tensor | FileSpan]:
            rows = leading_rows(src.shape)
            if rows == 0 or row_numel(src.shape) == 0:
                return
            span = getattr(src, "span", None)
            if span is not None and span(0, rows) is not None:
                row_bytes = row_numel(src.shape) * src.dtype.itemsize
                step = max(1, SPAN_BYTES // row_bytes)
                for start in range(0, rows, step):
                    yield from span(start, min(rows, start + step))
                return
            for start, stop in row_chunks(rows, row_numel(src.shape), align=src.row_align):
                yield src.load_rows(start, stop, into=ring.take())
        return produce

    return [OutputTensor(s.name, tuple(s.shape), s.dtype, producer(s)) for s in sources]


def check_written_shard(path: Path, planned: list[OutputTensor]) -> None:
    """Reopen a written shard with safetensors' own reader: its header must be valid for the file (offsets
    contiguous, sizes matching the file's length) and list exactly the planned names, shapes and dtypes.

    Only the header is read; the data is known from the bytes hashed while they were written.
    """
    from safetensors import SafetensorError, safe_open

    want = {t.name: (list(t.shape), _ST_NAMES[t.dtype]) for t in planned}
    try:
        with safe_open(str(path), framework="pt") as st:
            got = {name: (list(st.get_slice(name).get_shape()), st.get_slice(name).get_dtype()) for name in st.keys()}
    except (SafetensorError, OSError) as exc:
        raise ConversionError(f"{path}: the written file does not read back as safetensors ({exc})") from None
    if got != want:
        wrong = sorted(set(got) ^ set(want)) or sorted(n for n in want if got.get(n) != want[n])
        raise ConversionError(f"{path}: the written file does not hold the planned tensors ({', '.join(wrong[:5])})")
