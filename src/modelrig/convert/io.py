"""Streaming tensors: lazy tensors read row by row from their files, and the helpers every converter shares
(`readers` opens checkpoints, `shards` writes safetensors)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from modelrig.errors import ConversionError

#: File names that hold weights (never copied as "extra" files next to converted weights).
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pth", ".pt", ".h5", ".msgpack", ".ckpt", ".gguf")
#: Elements per chunk when a tensor is processed piecewise (4 Mi elements = 8 MiB of fp16).
CHUNK_ELEMENTS = 4 << 20

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype (`float16`), as used in configs and messages."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class FileSpan:
    """`nbytes` bytes of `path` from `offset`: a piece of output that is a verbatim copy of input bytes, so the
    kernel can copy it file to file (`copy_span`) without passing it through a buffer."""

    path: Path
    offset: int
    nbytes: int


@dataclass
class LazyTensor:
    """A tensor in a file, known by shape and dtype, read only when asked (by whole or by rows)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    path: Path
    offset: int
    stride: tuple[int, ...] | None = None
    storage_key: str | None = None
    _loader: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self.numel * self.dtype.itemsize

    @property
    def row_align(self) -> int:
        """Rows are read one by one (any row range can be read)."""
        return 1

    @property
    def contiguous(self) -> bool:
        """True when the tensor occupies one contiguous byte range of its file."""
        if self.stride is None:
            return True
        expected, acc = [], 1
        for d in reversed(self.shape):
            expected.append(acc)
            acc *= d
        return all(d == 1 or s == e for d, s, e in zip(self.shape, self.stride, reversed(expected), strict=True))

    def span(self, start: int, stop: int) -> list[FileSpan] | None:
        """Rows `start:stop` as byte ranges of the file, or None when the bytes are not stored verbatim there
        (a tensor loaded by torch, or one not contiguous on disk)."""
        if self._loader is not None or not self.contiguous:
            return None
        row = (self.numel // self.shape[0] if self.shape and self.shape[0] else self.numel) * self.dtype.itemsize
        return [FileSpan(self.path, self.offset + start * row, (stop - start) * row)]

    def load(self) -> torch.Tensor:
        """Read the whole tensor into fresh memory (never a view of a file mapping)."""
        if self._loader is not None:
            return self._loader().clone()
        if not self.contiguous:
            raise ConversionError(f"{self.path}: tensor {self.name} is not contiguous on disk")
        return self.load_rows(0, self.shape[0] if self.shape else 1).reshape(self.shape)

    def load_rows(self, start: int, stop: int, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Read rows `start:stop` of dimension 0 (the tensor must be contiguous on disk) into fresh memory.

        `into`, a uint8 buffer at least that large, is filled instead of allocating one (the result is a view).
        """
        row = self.numel // self.shape[0] if self.shape and self.shape[0] else self.numel
        nbytes = (stop - start) * row * self.dtype.itemsize
        shape = (stop - start, *self.shape[1:]) if self.shape else ()
        if self._loader is not None:
            rows = self._loader()
            rows = rows[start:stop] if self.shape else rows
            return into_buffer(into, nbytes).view(self.dtype).reshape(shape).copy_(rows)
        if not self.contiguous:
            raise ConversionError(f"{self.path}: tensor {self.name} is not contiguous on disk")
        buf = into_buffer(into, nbytes)
        got = read_at(self.path, self.offset + start * row * self.dtype.itemsize, memoryview(buf.numpy()))
        if got != nbytes:
            raise ConversionError(f"{self.path}: truncated file (tensor {self.name} needs {nbytes} bytes, "
                                  f"found {got})")
        return buf.view(self.dtype).reshape((stop - start, *self.shape[1:]) if self.shape else ())


_OPEN_FILES: dict[Path, int] | None = None


@contextlib.contextmanager
def open_inputs() -> Iterator[None]:
    """Within this block, reads of input files keep each file open (one open per file, not one per chunk).

    Inputs do not change during a conversion; every descriptor is closed when the outermost block ends.
    """
    global _OPEN_FILES
    outer = _OPEN_FILES is not None
    if not outer:
        _OPEN_FILES = {}
    try:
        yield
    finally:
        if not outer and _OPEN_FILES is not None:
            for fd in _OPEN_FILES.values():
                os.close(fd)
            _OPEN_FILES = None


def read_at(path: Path, offset: int, view: memoryview) -> int:
    """Fill `view` from `path` at `offset`; returns the bytes read (fewer at the end of the file)."""
    files = _OPEN_FILES
    if files is None:
        got = 0
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while got < len(view) and (n := f.readinto(view[got:])):
                got += n
        return got
    fd = _input_fd(files, path)
    got = 0
    while got < len(view) and (n := os.preadv(fd, [view[got:]], offset + got)):
        got += n
    return got


def _input_fd(files: dict[Path, int], path: Path) -> int:
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    return fd


#: False once the kernel refused `copy_file_range` (another OS, an old kernel, a filesystem pair it cannot do).
_COPY_RANGE = hasattr(os, "copy_file_range")


def copy_span(span: FileSpan, out_fd: int, *, scratch: bytearray) -> None:
    """Append `span` to the file open as `out_fd`, copied by the kernel file to file where it can (no pass through
    user memory), else read into `scratch` and written."""
    if _COPY_RANGE and _copy_by_kernel(span, out_fd):
        return
    for piece in _span_pieces(span, scratch):
        write_all(out_fd, piece)


def _copy_by_kernel(span: FileSpan, out_fd: int) -> bool:
    """`copy_file_range` the whole span; False (and no further tries) when the kernel refuses before copying."""
    global _COPY_RANGE
    files = _OPEN_FILES if _OPEN_FILES is not None else {}
    fd = _input_fd(files, span.path)
    done = 0
    try:
        while done < span.nbytes:
            n = os.copy_file_range(fd, out_fd, span.nbytes - done, span.offset + done)
            if n == 0:
                raise ConversionError(f"{span.path}: truncated file (needs {span.offset + span.nbytes} bytes)")
            done += n
        return True
    except OSError:
        if done:
            raise
        _COPY_RANGE = False
        return False
    finally:
        if files is not _OPEN_FILES:
            os.close(fd)


#: Bytes handed to one `digest.update` when a span is hashed straight from the input's page cache.
HASH_PIECE_BYTES = 64 << 20


def hash_span(span: FileSpan, digest: Any, *, scratch: bytearray) -> None:
    """Feed `span`'s bytes to `digest` (a hashlib object): from a read-only mapping of the input (no copy through
    user memory), or read through `scratch` where the file cannot be mapped."""
    if span.nbytes and _hash_mapped(span, digest):
        return
    for piece in _span_pieces(span, scratch):
        digest.update(piece)


def _hash_mapped(span: FileSpan, digest: Any) -> bool:
    import mmap

    try:
        with open(span.path, "rb", buffering=0) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if span.offset + span.nbytes > len(mm):
                raise ConversionError(f"{span.path}: truncated file (needs {span.offset + span.nbytes} bytes)")
            view = memoryview(mm)
            try:
                end = span.offset + span.nbytes
                for start in range(span.offset, end, HASH_PIECE_BYTES):
                    piece = view[start:min(start + HASH_PIECE_BYTES, end)]
                    digest.update(piece)
                    piece.release()
            finally:
                view.release()
    except (OSError, ValueError):  # nothing was hashed yet when mapping fails
        return False
    return True


def _span_pieces(span: FileSpan, scratch: bytearray) -> Iterator[memoryview]:
    """`span`'s bytes in order, each piece read into `scratch` (valid until the next piece is asked for)."""
    view = memoryview(scratch)
    done = 0
    while done < span.nbytes:
        got = read_at(span.path, span.offset + done, view[: min(len(view), span.nbytes - done)])
        if got == 0:
            raise ConversionError(f"{span.path}: truncated file (needs {span.offset + span.nbytes} bytes)")
        yield view[:got]
        done += got


#: Bytes written between two requests to the kernel to start writing a file's dirty pages back to disk.
WRITEBACK_BYTES = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's `sync_file_range` (Linux), or None where there is none (then writeback starts at fsync)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _load_sync_file_range()


class Writeback:
    """Starts the kernel writing a file's pages to disk as they are written (every `WRITEBACK_BYTES`), so the
    final fsync waits only for the tail instead of the whole file; durability still comes from that fsync."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd, self.written, self.kicked = fd, start, 0

    def advance(self, nbytes: int) -> None:
        """`nbytes` more were written at the end of the file."""
        self.written += nbytes
        if _SYNC_FILE_RANGE is not None and self.written - self.kicked >= WRITEBACK_BYTES:
            _SYNC_FILE_RANGE(self.fd, self.kicked, self.written - self.kicked, _SYNC_FILE_RANGE_WRITE)
            self.kicked = self.written


def write_all(fd: int, data: memoryview | bytes) -> None:
    """Write all of `data` to `fd` (a write may take less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class RowSource(Protocol):
    """A tensor whose rows are read on demand: a tensor in a file, or one computed from others (a fused step).

    `load_rows(start, stop, into=buf)` returns rows `start:stop` of dimension 0 (for a 0-d tensor: `(0, 1)`,
    the value), using the uint8 buffer `into` when it is large enough; `row_align` is the number of rows the
    source prefers to be read by (a rotary head), so chunks are multiples of it.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def row_align(self) -> int: ...  # pragma: no cover - protocol

    def load_rows(self, start: int, stop: int, *, into: torch.Tensor | None = None) -> torch.Tensor:
        ...  # pragma: no cover - protocol


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch's element-wise work on the calling thread only, as conversions do.

    Their arithmetic is memory-bound and runs beside a writer thread and an input hasher: torch's own worker
    threads would only contend with those for cores (measured 2x slower adds, 4x slower column copies on two
    busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def leading_rows(shape: tuple[int, ...]) -> int:
    """Rows of dimension 0 (1 for a 0-d tensor)."""
    return shape[0] if shape else 1


def row_numel(shape: tuple[int, ...]) -> int:
    """Elements in one row of dimension 0."""
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def into_buffer(into: torch.Tensor | None, nbytes: int) -> torch.Tensor:
    """`into[:nbytes]` when that buffer is large enough, else a fresh uint8 buffer."""
    if into is not None and into.numel() >= nbytes:
        return into[:nbytes]
    return torch.empty(nbytes, dtype=torch.uint8)
