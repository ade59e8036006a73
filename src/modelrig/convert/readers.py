"""Reading checkpoints lazily: safetensors headers, pickles (torch's weights_only check first), model folders."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: File names that hold weights (never copied as "extra" files next to converted weights).
from modelrig.convert.io import _ST_DTYPES, _STORAGE_DTYPES, WEIGHT_SUFFIXES, LazyTensor
from modelrig.errors import ConversionError


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
