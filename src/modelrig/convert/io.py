"""Streaming checkpoint I/O: lazy tensor readers (safetensors, zip pickles) and a sharded safetensors writer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from modelrig import humansize
from modelrig.errors import ConversionError, DiskSpaceError
from modelrig.progress import bar

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
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    got = 0
    while got < len(view) and (n := os.preadv(fd, [view[got:]], offset + got)):
        got += n
    return got


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


# ----------------------------------------------------------------------------------------------- readers


def read_safetensors_header(path: Path) -> dict[str, LazyTensor]:
    """The tensors of a `.safetensors` file from its header alone; data is read on demand with plain reads."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ConversionError(f"{path}: not a valid safetensors file ({exc})") from None
    base = 8 + size
    file_size = path.stat().st_size
    out: dict[str, LazyTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        if base + stop > file_size:
            raise ConversionError(f"{path}: truncated file (tensor {name} ends past the end of the file)")
        if info["dtype"] not in _ST_DTYPES:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = LazyTensor(name, tuple(info["shape"]), _ST_DTYPES[info["dtype"]], path, base + start,
                               storage_key=f"{start}")
    return out


class _RefusedGlobal(Exception):
    pass


class _LazyUnpickler(pickle.Unpickler):
    """Reads a torch zip pickle's structure without data; only tensor-rebuilding globals are allowed."""

    def __init__(self, fileobj: Any, records: dict[str, tuple[torch.dtype, int]]) -> None:
        super().__init__(fileobj)
        self.records = records

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return getattr(self, name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and name == "Size":
            return tuple
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise _RefusedGlobal(f"persistent id {kind}")
        dtype = storage_type if isinstance(storage_type, torch.dtype) else _STORAGE_DTYPES.get(storage_type)
        if dtype is None:
            raise _RefusedGlobal(f"storage {storage_type}")
        self.records[key] = (dtype, numel)
        return ("storage", key, dtype)

    @staticmethod
    def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                           *_args: Any) -> Any:
        return ("tensor", storage[1], storage[2], storage_offset, tuple(size), tuple(stride))

    @staticmethod
    def _rebuild_parameter(data: Any, *_args: Any) -> Any:
        return data


def check_pickle_weights_only(path: Path) -> Any:
    """Refuse a pickle checkpoint that needs anything beyond tensors (torch's `weights_only=True` unpickler).

    Returns what torch loaded: memory-mapped tensors (nothing read) for zip checkpoints, else the loaded object.
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise ConversionError(
            f"{path}: refusing to unpickle: it needs code beyond plain tensors ({detail.strip()}); convert it "
            "only if you trust its source, with --allow-unsafe-pickle") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None


def read_pickle_lazily(path: Path, *, allow_unsafe: bool = False) -> dict[str, LazyTensor]:
    """The tensors of a `.bin`/`.pth` checkpoint, read on demand with plain reads of the zip records.

    The file is first checked with torch's `weights_only=True` unpickler (or, with `allow_unsafe`, fully
    unpickled). Files the lazy reader cannot map (legacy non-zip pickles, unusual globals) are served from what
    that check loaded: memory-mapped tensors for zip checkpoints, so nothing is read twice.
    """
    if allow_unsafe:
        state = torch.load(path, map_location="cpu", weights_only=False)
        return _from_loaded(path, state)
    reference = check_pickle_weights_only(path)
    try:
        tensors = _lazy_zip(path)
    except (_RefusedGlobal, zipfile.BadZipFile, KeyError, ValueError):
        return _from_loaded(path, reference)  # what torch already loaded (memory-mapped where it could)
    _spot_check(path, tensors, reference)
    return tensors


#: Bytes compared at each end of every tensor against torch's own unpickler.
SPOT_CHECK_BYTES = 256


def _spot_check(path: Path, tensors: dict[str, LazyTensor], reference: Any) -> None:
    """Compare the lazy reader with torch's unpickler: names, shapes, dtypes, and the first and last bytes of
    every tensor (torch's tensors are memory-mapped, so only those pages are read).

    This checks the reader's offset arithmetic on every tensor for the cost of two small reads each; a
    disagreement is an error naming the tensor.
    """
    if isinstance(reference, dict) and "state_dict" in reference and isinstance(reference["state_dict"], dict):
        reference = reference["state_dict"]
    if not isinstance(reference, dict):
        return
    for name, t in tensors.items():
        ref = reference.get(name)
        if not isinstance(ref, torch.Tensor) or tuple(ref.shape) != t.shape or ref.dtype != t.dtype:
            raise ConversionError(f"{path}: tensor {name} reads differently than torch.load reads it "
                                  "(shape or dtype); the file is damaged or in an unknown layout")
        if not t.contiguous or not ref.is_contiguous() or t.nbytes == 0:
            continue
        flat = ref.reshape(-1).view(torch.uint8)
        k = min(SPOT_CHECK_BYTES, t.nbytes)
        with open(path, "rb", buffering=0) as f:
            f.seek(t.offset)
            head = f.read(k)
            f.seek(t.offset + t.nbytes - k)
            tail = f.read(k)
        if head != flat[:k].numpy().tobytes() or tail != flat[-k:].numpy().tobytes():
            raise ConversionError(f"{path}: tensor {name} reads differently than torch.load reads it (data); "
                                  "the file is damaged or in an unknown layout")


def _from_loaded(path: Path, state: Any) -> dict[str, LazyTensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    out: dict[str, LazyTensor] = {}
    for name, t in state.items():
        if isinstance(t, torch.Tensor):
            key = f"{t.untyped_storage().data_ptr()}"
            out[name] = LazyTensor(name, tuple(t.shape), t.dtype, path, t.storage_offset() * t.element_size(),
                                   tuple(t.stride()), key, _loader=lambda t=t: t.contiguous())
    return out


def _lazy_zip(path: Path) -> dict[str, LazyTensor]:
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise KeyError("data.pkl")
        prefix = pkl[: -len("data.pkl")]
        records: dict[str, tuple[torch.dtype, int]] = {}
        with zf.open(pkl) as f:
            state = _LazyUnpickler(f, records).load()
        offsets = {key: _member_data_offset(path, zf.getinfo(f"{prefix}data/{key}")) for key in records}
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, LazyTensor] = {}
    for name, value in state.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            continue
        _, key, dtype, storage_offset, size, stride = value
        out[name] = LazyTensor(name, size, dtype, path, offsets[key] + storage_offset * dtype.itemsize, stride,
                               storage_key=key)
    return out


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError("compressed record")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError("bad local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def open_checkpoint_file(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, LazyTensor]:
    """The tensors of one weight file (`.safetensors`, `.bin`, `.pth`, `.pt`)."""
    if not path.is_file():
        raise ConversionError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)
    return read_pickle_lazily(path, allow_unsafe=allow_unsafe_pickle)


def weight_files(source: Path) -> list[Path]:
    """The weight files of a model directory (via its index when present) or the file itself.

    Raises `ConversionError` for a directory without weights or an index that names a missing shard.
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ConversionError(f"{source}: no such file or directory")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = source / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ConversionError(f"{index}: not a valid weight index ({exc})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (source / f).is_file()]
            if missing:
                raise ConversionError(f"{index}: names missing shard(s) {', '.join(missing)}; the download is "
                                      "incomplete")
            return [source / f for f in files]
    for pattern in ("model.safetensors", "pytorch_model.bin"):
        if (source / pattern).is_file():
            return [source / pattern]
    found = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not found:
        raise ConversionError(f"{source}: no weights found (expected *.safetensors or pytorch_model*.bin)")
    return found


@dataclass
class ModelReader:
    """All tensors of a model directory or file, by name, read lazily."""

    source: Path
    files: list[Path]
    tensors: dict[str, LazyTensor]

    @classmethod
    def open(cls, source: Path, *, allow_unsafe_pickle: bool = False) -> ModelReader:
        """Index every tensor of `source`; duplicate names across shards are an error."""
        files = weight_files(Path(source))
        tensors: dict[str, LazyTensor] = {}
        for f in files:
            for name, t in open_checkpoint_file(f, allow_unsafe_pickle=allow_unsafe_pickle).items():
                if name in tensors:
                    raise ConversionError(f"{f}: tensor {name} also appears in {tensors[name].path.name}")
                tensors[name] = t
        return cls(Path(source), files, tensors)


def copy_extra_files(source: Path, dest: Path) -> list[str]:
    """Copy config, tokenizer and other non-weight files of a model directory; returns their names."""
    copied: list[str] = []
    if not source.is_dir():
        return copied
    for entry in sorted(source.iterdir()):
        name = entry.name
        if not entry.is_file() or name.startswith(".") or name.endswith(WEIGHT_SUFFIXES):
            continue
        if name.endswith(".index.json") or name.endswith(".md"):
            continue
        shutil.copyfile(entry, dest / name)
        copied.append(name)
    return copied


# ----------------------------------------------------------------------------------------------- writer


@dataclass
class OutputTensor:
    """One tensor of a planned output: its name, shape, dtype and a producer of its data in row order."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], Iterable[torch.Tensor]]

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


def ensure_free_space(directory: Path, needed: int) -> None:
    """Refuse before starting when `directory`'s filesystem has less than `needed` bytes (plus 2%) free."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.02 + (16 << 20):
        raise DiskSpaceError(f"{directory}: needs {humansize.format_size(needed)} free for the output, only "
                             f"{humansize.format_size(free)} available; free space or use another --data-root")


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
    with bar(total, desc) as progress:
        for fname in sorted(shards):
            planned = [by_name[n] for n in shards[fname]]
            digests[fname] = _write_one_shard(planned, out / fname, meta, progress)
            check_written_shard(out / fname, planned)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: f for f, names in shards.items() for n in names}}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (out / "model.safetensors.index.json").write_text(text, encoding="utf-8")
        digests["model.safetensors.index.json"] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def _write_one_shard(tensors: list[OutputTensor], path: Path, metadata: dict[str, str], progress: Any) -> str:
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
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as writer, \
            ThreadPoolExecutor(max_workers=1) as hasher:
        # Each piece is written by one thread and hashed by another (both release the GIL) while the next piece
        # is produced; a piece's buffer is reused only after both are done with it.
        pending: list[Any] = []
        head = struct.pack("<Q", len(blob)) + blob
        f.write(head)
        digest.update(head)
        for t in tensors:
            written = 0
            for piece in t.produce():
                if piece.dtype != t.dtype:
                    raise ConversionError(f"tensor {t.name}: produced {piece.dtype}, planned {t.dtype}")
                data = piece.contiguous().reshape(-1).view(torch.uint8).numpy()
                for done in pending:
                    done.result()
                pending = [writer.submit(f.write, data), hasher.submit(digest.update, data)]
                written += data.nbytes
                progress.update(data.nbytes)
            if written != t.nbytes:
                raise ConversionError(f"tensor {t.name}: produced {written} bytes, planned {t.nbytes} "
                                      f"(shape {list(t.shape)})")
        for done in pending:
            done.result()
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


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
    """Output tensors whose data is read from `sources` in row chunks into two reused buffers.

    Memory stays around two chunks however large a tensor is; a 0-d tensor is one piece.
    """
    ring = BufferRing(CHUNK_ELEMENTS * 8 + (64 << 10))

    def producer(src: RowSource) -> Callable[[], Iterator[torch.Tensor]]:
        def produce() -> Iterator[torch.Tensor]:
            rows = leading_rows(src.shape)
            if rows == 0 or row_numel(src.shape) == 0:
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
