"""Apply and make weight deltas (Ziya `replace`, FastChat `add`, `zero-pad-add`, LLaVA `slice-add`), streaming.

Precision: every sum is computed in float32 and rounded once to the output dtype, so the result is bit-for-bit
the whole-model merge (load both with transformers, add, save) and FastChat's in-place fp16 `+=` (PyTorch adds
halves in float32 and rounds once). What is not exact is a delta itself: `make_delta` rounds `target - base` to
fp16, so `base + delta` returns the target exactly for most elements and otherwise within one ulp of the larger
of target and difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from modelrig.convert.io import (
    CHUNK_ELEMENTS,
    FileSpan,
    LazyTensor,
    RowSource,
    dtype_name,
    one_torch_thread,
    open_inputs,
)
from modelrig.convert.product import Product, write_product
from modelrig.convert.readers import ModelReader, copy_extra_files
from modelrig.convert.shards import OutputTensor, row_chunks, write_safetensors_shards
from modelrig.convert.step import run_step
from modelrig.errors import ConversionError
from modelrig.manifest import DeltaConvention
from modelrig.result import StageResult

#: The delta conventions, as the manifest schema names them.
CONVENTIONS: tuple[str, ...] = get_args(DeltaConvention)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConversionError(f"unknown delta convention {convention!r} (one of {', '.join(CONVENTIONS)})")

#: Tensors a `replace` delta (Fengshenbang's apply_delta.py) holds as full weights, matched by substring.
REPLACE_KEYS = ("embed_tokens", "lm_head.weight", "rotary_emb.inv_freq")
#: Vocabulary-sized tensors whose rows a delta may extend.
VOCAB_KEYS = ("embed_tokens.weight", "lm_head.weight")
#: A "difference" this similar to the base (cosine) and this large relative to it is really a full weight.
FULL_WEIGHT_COSINE = 0.5
FULL_WEIGHT_NORM_RATIO = 0.5


def is_replaced(name: str) -> bool:
    """True for tensors the `replace` convention copies from the delta as they are."""
    return any(k in name for k in REPLACE_KEYS)


def _is_vocab(name: str) -> bool:
    return name.endswith(VOCAB_KEYS)


def _is_buffer(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq")


@dataclass(frozen=True)
class MergeRule:
    """How one output tensor is made: copied from one side, or base + delta over the first `rows` rows."""

    name: str
    kind: Literal["copy-delta", "copy-base", "add"]
    rows: int = 0


def plan_merge(base: dict[str, LazyTensor], delta: dict[str, LazyTensor], convention: str) -> list[MergeRule]:
    """The per-tensor merge rules for a convention, checking names and shapes first (pure: no data read).

    Raises `ConversionError` with a hint at the right convention when shapes say this one is wrong.
    """
    _check_convention(convention)
    rules: list[MergeRule] = []
    if convention == "replace":
        for name in sorted(delta):
            d = delta[name]
            if is_replaced(name):
                rules.append(MergeRule(name, "copy-delta"))
                continue
            if name not in base:
                raise ConversionError(f"delta tensor {name} is not in the base model: wrong base, or not a "
                                      "replace-convention delta")
            _same_shape(name, base[name], d, convention)
            rules.append(MergeRule(name, "add", d.shape[0] if d.shape else 1))
        missing = sorted(n for n in base if n not in delta and not _is_buffer(n))
        if missing:
            raise ConversionError(f"base tensor {missing[0]} is missing from the delta ({len(missing)} missing): "
                                  "the delta is incomplete or was made from another model")
        return rules
    for name in sorted(set(base) | set(delta)):
        b, d = base.get(name), delta.get(name)
        if b is None:
            if _is_buffer(name):
                continue
            if convention == "slice-add":
                rules.append(MergeRule(name, "copy-delta"))
                continue
            raise ConversionError(f"delta tensor {name} has no counterpart in the base; "
                                  "if it is new in the target (e.g. a multimodal projector) use --convention slice-add")
        if d is None:
            if _is_buffer(name):
                continue
            raise ConversionError(f"base tensor {name} is missing from the delta: the delta is incomplete or "
                                  "was made from another model")
        if b.shape == d.shape:
            rules.append(MergeRule(name, "add", d.shape[0] if d.shape else 1))
            continue
        grows_vocab = (_is_vocab(name) and len(b.shape) == 2 and len(d.shape) == 2 and b.shape[1] == d.shape[1]
                       and d.shape[0] > b.shape[0])
        if grows_vocab and convention in ("zero-pad-add", "slice-add"):
            rules.append(MergeRule(name, "add", b.shape[0]))
            continue
        hint = " (the delta extends the vocabulary: use --convention zero-pad-add, slice-add or replace)" \
            if grows_vocab else ""
        raise ConversionError(f"tensor {name}: base shape {list(b.shape)} does not match delta shape "
                              f"{list(d.shape)} under convention {convention}{hint}")
    return rules


def _same_shape(name: str, b: LazyTensor, d: LazyTensor, convention: str) -> None:
    if b.shape != d.shape:
        raise ConversionError(f"tensor {name}: base shape {list(b.shape)} does not match delta shape "
                              f"{list(d.shape)} under convention {convention}; wrong base model size?")


#: The convention check reads at most this many rows of the embedding, in blocks spread evenly over it.
CHECK_ROWS = 2048
_CHECK_BLOCK = 64


def _sample_blocks(rows: int) -> list[tuple[int, int]]:
    if rows <= CHECK_ROWS:
        return [(0, rows)]
    blocks = CHECK_ROWS // _CHECK_BLOCK
    starts = [(rows - _CHECK_BLOCK) * k // (blocks - 1) for k in range(blocks)]
    return [(s, s + _CHECK_BLOCK) for s in starts]


def similarity(base: RowSource, delta: RowSource, rows: int) -> tuple[float, float]:
    """(cosine, ||delta|| / ||base||) over the first `rows` rows (a sample of `CHECK_ROWS` rows spread evenly
    over them when there are more), computed in float32."""
    dot = bb = dd = 0.0
    for start, stop in _sample_blocks(rows):
        b = base.load_rows(start, stop).float()
        d = delta.load_rows(start, stop).float()
        dot += float((b * d).sum())
        bb += float((b * b).sum())
        dd += float((d * d).sum())
    if bb == 0 or dd == 0:
        return 0.0, (dd ** 0.5) / (bb ** 0.5) if bb else float("inf")
    return dot / (bb ** 0.5 * dd ** 0.5), (dd / bb) ** 0.5


def check_convention(base: dict[str, LazyTensor], delta: dict[str, LazyTensor], convention: str) -> None:
    """Tell full weights from differences on the embedding, and refuse a convention that would corrupt the model.

    A difference is small and weakly correlated with the base; a fine-tuned full weight is close to it.
    """
    name = next((n for n in sorted(delta) if n.endswith("embed_tokens.weight") and n in base), None)
    if name is None or not getattr(base[name], "contiguous", True) or not getattr(delta[name], "contiguous", True):
        return
    rows = min(base[name].shape[0], delta[name].shape[0])
    cosine, ratio = similarity(base[name], delta[name], rows)
    looks_full = cosine > FULL_WEIGHT_COSINE and ratio > FULL_WEIGHT_NORM_RATIO
    if convention != "replace" and looks_full:
        raise ConversionError(f"delta's {name} looks like full weights, not a difference (cosine {cosine:.2f} "
                              f"with the base, norm ratio {ratio:.2f}); adding it would corrupt the model: use "
                              "--convention replace (Ziya/Fengshenbang deltas)")
    if convention == "replace" and not looks_full:
        raise ConversionError(f"delta's {name} looks like a difference, not full weights (cosine {cosine:.2f} "
                              f"with the base, norm ratio {ratio:.2f}); replacing would corrupt the model: use "
                              "--convention add, zero-pad-add or slice-add")


def _output_dtype(rule: MergeRule, b: RowSource | None, d: RowSource) -> torch.dtype:
    if rule.kind == "copy-delta":
        return d.dtype
    return b.dtype if b is not None else d.dtype


@dataclass
class MergedTensor:
    """One output tensor of a merge, computed by rows: `dtype(fp32(delta) + fp32(base))` over the first
    `rule.rows` rows (later rows from the delta), or the delta's rows as they are (`copy-delta`).

    Equal half-precision inputs are added in place (the delta rows in the caller's buffer, the base rows in
    `scratch`): PyTorch adds two halves in float32 and rounds once, so the bits are the same.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    rule: MergeRule
    base: RowSource | None
    delta: RowSource
    scratch: torch.Tensor

    @property
    def row_align(self) -> int:
        """Rows in the units both sides prefer."""
        return math.lcm(self.delta.row_align, self.base.row_align if self.base is not None else 1)

    def span(self, start: int, stop: int) -> list[FileSpan] | None:
        """Rows `start:stop` as byte ranges of an input file when they are the delta's rows as stored, else None."""
        span = getattr(self.delta, "span", None)
        if (self.rule.kind == "copy-delta" or self.base is None) and self.delta.dtype == self.dtype and span:
            return span(start, stop)
        return None

    def load_rows(self, start: int, stop: int, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `start:stop` of the merged tensor."""
        d, b = self.delta, self.base
        if self.rule.kind == "copy-delta" or b is None:
            return d.load_rows(start, stop, into=into).to(self.dtype)
        if not self.shape:
            return (d.load_rows(0, 1).float() + b.load_rows(0, 1).float()).to(self.dtype)
        same = d.dtype == b.dtype == self.dtype and self.dtype in (torch.float16, torch.bfloat16)
        chunk = d.load_rows(start, stop, into=into) if same else d.load_rows(start, stop).float()
        if start < self.rule.rows:
            upto = min(stop, self.rule.rows)
            base_rows = b.load_rows(start, upto, into=self.scratch if same else None)
            chunk[: upto - start] += base_rows if same else base_rows.float()
        return chunk.to(self.dtype)


def _difference_producer(b: LazyTensor, t: LazyTensor, rows: int, dtype: torch.dtype):
    """Yield the delta of `target - base` (first `rows` rows; later rows are the target's) in row chunks."""
    def produce() -> Iterator[torch.Tensor]:
        if not t.shape:
            yield (t.load().float() - b.load().float()).to(dtype)
            return
        row = t.numel // t.shape[0] if t.shape[0] else 0
        for start, stop in row_chunks(t.shape[0], row):
            chunk = t.load_rows(start, stop).to(dtype)
            if start < rows:
                upto = min(stop, rows)
                chunk[: upto - start] = (chunk[: upto - start].float() - b.load_rows(start, upto).float()).to(dtype)
            yield chunk
    return produce


def _copy_producer(t: LazyTensor, dtype: torch.dtype):
    def produce() -> Iterator[torch.Tensor]:
        if not t.shape or not t.contiguous:
            yield t.load().to(dtype)
            return
        row = t.numel // t.shape[0] if t.shape[0] else 0
        for start, stop in row_chunks(t.shape[0], row):
            yield t.load_rows(start, stop).to(dtype)
    return produce


def merge_tensors(base: dict[str, RowSource], delta: dict[str, RowSource], convention: str) -> list[MergedTensor]:
    """The tensors of applying `delta` to `base` (names and shapes checked now; data computed when read)."""
    scratch = torch.empty(CHUNK_ELEMENTS * 8 + (64 << 10), dtype=torch.uint8)
    out: list[MergedTensor] = []
    for rule in plan_merge(base, delta, convention):
        d = delta[rule.name]
        b = base.get(rule.name)
        out.append(MergedTensor(rule.name, tuple(d.shape), _output_dtype(rule, b, d), rule,
                                None if rule.kind == "copy-delta" else b, d, scratch))
    return out


def merged_product(base: Product, delta: Product, *, convention: str, check: bool = True) -> Product:
    """The product of applying `delta` to `base`: merged tensors, and the delta's config (its `torch_dtype`
    set to the merged dtype) and tokenizer files.

    With `check`, the embedding is first checked to look like what the convention expects (full weights for
    `replace`, a difference otherwise).
    """
    b, d = base.by_name(), delta.by_name()
    tensors = merge_tensors(b, d, convention)
    if check:
        with one_torch_thread(), open_inputs():
            check_convention(b, d, convention)

    def write_extras(dest: Path) -> list[str]:
        names = delta.write_extras(dest)
        _set_config_dtype(dest, tensors)
        return names

    return Product(list(tensors), write_extras)


def apply_delta(*, base: Path, delta: Path, out: Path, convention: str, max_shard_size: int | str = "5GB",
                check: bool = True, allow_unsafe_pickle: bool = False, cache: Path | None = None,
                model: str | None = None) -> StageResult:
    """Apply a delta to a base model, writing safetensors shards, the delta's config and tokenizer to `out`.

    Arithmetic is float32, stored in the base dtype (`replace` copies keep the delta's). Memory stays around
    one chunk of one tensor. Idempotent (stamped) and atomic.
    """
    base, delta, out = Path(base), Path(delta), Path(out)
    params = {"convention": convention, "max_shard_size": str(max_shard_size), "check": check}

    state: dict[str, Product] = {}

    def needed() -> int:
        state["product"] = merged_product(Product.from_disk(base, allow_unsafe_pickle=allow_unsafe_pickle),
                                          Product.from_disk(delta, allow_unsafe_pickle=allow_unsafe_pickle),
                                          convention=convention, check=check)
        return state["product"].nbytes

    def body(tmp: Path) -> dict[str, object]:
        product = state["product"]
        files, extra = write_product(product, tmp, max_shard_size=max_shard_size, desc="merge")
        return {"files": files, "copied": extra, "tensors": len(product.tensors),
                "summary": f"delta ({convention}): {len(product.tensors)} tensors -> {out}"}

    return run_step("delta", out=out, params=params, sources={"base": base, "delta": delta}, needed_bytes=needed,
                    body=body, cache=cache, model=model)


def _set_config_dtype(tmp: Path, tensors: list[MergedTensor]) -> None:
    cfg = tmp / "config.json"
    if not cfg.is_file():
        return
    dtypes = {t.dtype for t in tensors if t.dtype.is_floating_point and len(t.shape) > 1}
    if len(dtypes) != 1:
        return
    config = json.loads(cfg.read_text(encoding="utf-8"))
    name = dtype_name(dtypes.pop())
    if config.get("torch_dtype") != name:
        config["torch_dtype"] = name
        cfg.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def difference_tensors(base: dict[str, LazyTensor], target: dict[str, LazyTensor],
                       convention: str) -> list[OutputTensor]:
    """The planned tensors of a delta such that applying it with `convention` to `base` gives `target`."""
    _check_convention(convention)
    out: list[OutputTensor] = []
    for name in sorted(target):
        t = target[name]
        b = base.get(name)
        full = (convention == "replace" and is_replaced(name)) or (b is None and (
            convention == "slice-add" or _is_buffer(name)))
        if full:
            out.append(OutputTensor(name, t.shape, t.dtype, _copy_producer(t, t.dtype)))
            continue
        if b is None:
            raise ConversionError(f"target tensor {name} is not in the base; convention {convention} cannot "
                                  "encode it (slice-add can)")
        if b.shape != t.shape:
            grows = (_is_vocab(name) and len(b.shape) == 2 and b.shape[1] == t.shape[1]
                     and t.shape[0] > b.shape[0] and convention in ("zero-pad-add", "slice-add"))
            if not grows:
                raise ConversionError(f"tensor {name}: base shape {list(b.shape)} vs target {list(t.shape)} "
                                      f"cannot be encoded with convention {convention}")
        rows = b.shape[0] if b.shape else 1
        out.append(OutputTensor(name, t.shape, t.dtype, _difference_producer(b, t, rows, t.dtype)))
    return out


def make_delta(*, base: Path, target: Path, out: Path, convention: str, max_shard_size: int | str = "5GB",
               allow_unsafe_pickle: bool = False, cache: Path | None = None) -> StageResult:
    """Write the delta that turns `base` into `target` under `convention` (plus the target's config/tokenizer).

    Differences are computed in float32 and stored in the target dtype (so `base + delta` gives the target back
    bit-exactly where fp16 can, else within one ulp of the larger of target and difference); `replace` keeps
    embeddings/lm_head whole.
    """
    base, target, out = Path(base), Path(target), Path(out)
    params = {"convention": convention, "max_shard_size": str(max_shard_size)}
    state: dict[str, object] = {}

    def needed() -> int:
        b = ModelReader.open(base, allow_unsafe_pickle=allow_unsafe_pickle)
        t = ModelReader.open(target, allow_unsafe_pickle=allow_unsafe_pickle)
        tensors = difference_tensors(b.tensors, t.tensors, convention)
        state["tensors"] = tensors
        return sum(x.nbytes for x in tensors)

    def body(tmp: Path) -> dict[str, object]:
        tensors = state["tensors"]
        assert isinstance(tensors, list)
        files = write_safetensors_shards(tensors, tmp, max_shard_size=max_shard_size, desc="make-delta")
        copy_extra_files(target, tmp)
        return {"files": files, "tensors": len(tensors),
                "summary": f"make-delta ({convention}): {len(tensors)} tensors -> {out}"}

    return run_step("make-delta", out=out, params=params, sources={"base": base, "target": target},
                    needed_bytes=needed, body=body, cache=cache)
