"""Meta's original LLaMA checkpoints (`consolidated.NN.pth` + `params.json`) to Hugging Face format, streaming."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelrig.convert.io import CHUNK_ELEMENTS, FileSpan, LazyTensor, dtype_name, into_buffer, row_numel
from modelrig.convert.product import Product, write_product
from modelrig.convert.readers import open_checkpoint_file
from modelrig.convert.step import run_step
from modelrig.errors import ConversionError
from modelrig.fetch.prune import recorded_files
from modelrig.result import StageResult

#: LLaMA-1 sizes: (hidden size, tensor-parallel shards) of Meta's release.
MODEL_SIZES: dict[str, tuple[int, int]] = {"7B": (4096, 1), "13B": (5120, 2), "30B": (6656, 4),
                                           "33B": (6656, 4), "65B": (8192, 8)}
#: Context length by LLaMA generation.
CONTEXT_LENGTH = {"1": 2048, "2": 4096}


def llama_intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float = 1.0) -> int:
    """Meta's FFN width: `multiple_of * ceil(int(mult * int(8*dim/3)) / multiple_of)`."""
    hidden = int(ffn_dim_multiplier * int(8 * dim / 3))
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary pairs to HF's halves, on the rows of a q or k projection."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def llama_config_dict(*, vocab_size: int, hidden_size: int, intermediate_size: int, num_layers: int,
                      num_heads: int, num_kv_heads: int, rms_norm_eps: float = 1e-6,
                      max_position_embeddings: int = 2048, dtype: str = "float16",
                      rope_theta: float = 10000.0) -> dict[str, Any]:
    """A LLaMA `config.json` that transformers 4.29 through 5.x all understand."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "llama",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "pad_token_id": 0,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def write_llama_tokenizer(out: Path, sp_model: bytes, *, added_tokens: Sequence[str] = (),
                          first_added_id: int | None = None, chat_template: str | None = None) -> None:
    """LLaMA tokenizer files (`tokenizer.model`, config, special tokens, added tokens) readable by 4.29..5.x."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(sp_model)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 2048,
        "sp_model_kwargs": {},
        **specials,
    }
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    decoder = {str(i): {"content": t, **entry} for i, t in enumerate(("<unk>", "<s>", "</s>"))}
    specials_map: dict[str, Any] = dict(specials)
    if added_tokens:
        start = first_added_id if first_added_id is not None else sentencepiece_vocab_size(sp_model)
        ids = {tok: start + k for k, tok in enumerate(added_tokens)}
        (out / "added_tokens.json").write_text(json.dumps(ids, indent=2, sort_keys=True) + "\n")
        for tok, i in ids.items():
            decoder[str(i)] = {"content": tok, **entry}
        specials_map["additional_special_tokens"] = list(added_tokens)
        config["additional_special_tokens"] = list(added_tokens)
    config["added_tokens_decoder"] = decoder
    if chat_template:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials_map, indent=2, sort_keys=True) + "\n")


def sentencepiece_vocab_size(sp_model: bytes) -> int:
    """Number of pieces of a serialized sentencepiece model."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()


@dataclass(frozen=True)
class MetaLayout:
    """What `params.json`, the shard files and the tokenizer say about a Meta checkpoint."""

    params: dict[str, Any]
    shards: list[Path]
    tokenizer: Path
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads


def read_layout(input_dir: Path, *, size: str | None = None) -> MetaLayout:
    """Find and check the files of a Meta checkpoint (`tokenizer.model` may sit one level up, as in LLaMA-1)."""
    input_dir = Path(input_dir)
    params_path = input_dir / "params.json"
    if not params_path.is_file():
        raise ConversionError(f"{params_path}: not found (--input must be the folder with params.json and "
                              "consolidated.NN.pth, e.g. llama/13B)")
    try:
        params = json.loads(params_path.read_text(encoding="utf-8"))
        params = params.get("model", params)
        dim, n_layers, n_heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
    except (ValueError, KeyError) as exc:
        raise ConversionError(f"{params_path}: missing or invalid field {exc}") from None
    shards = sorted(input_dir.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"{input_dir}: no consolidated.NN.pth files")
    expected_names = [f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    if [s.name for s in shards] != expected_names:
        raise ConversionError(f"{input_dir}: shard files {', '.join(s.name for s in shards)} are not numbered "
                              f"00..{len(shards) - 1:02d}: a shard is missing")
    if size is not None:
        if size not in MODEL_SIZES:
            raise ConversionError(f"unknown --size {size} (one of {', '.join(MODEL_SIZES)})")
        want_dim, want_shards = MODEL_SIZES[size]
        real_dims = {d for d, _ in MODEL_SIZES.values()}
        # The shard count tells LLaMA-1 sizes apart; a hidden size of another real size is also a mismatch.
        # Scaled-down checkpoints (tests, the offline demo) keep the shard layout of the size they stand for.
        if len(shards) != want_shards or (dim in real_dims and dim != want_dim):
            raise ConversionError(f"{input_dir}: this is not a LLaMA {size} checkpoint (params.json dim={dim}, "
                                  f"{len(shards)} shard(s); {size} has dim={want_dim} and {want_shards} shard(s))")
    tokenizer = next((p for p in (input_dir / "tokenizer.model", input_dir.parent / "tokenizer.model")
                      if p.is_file()), None)
    if tokenizer is None:
        raise ConversionError(f"{input_dir}: tokenizer.model not found here or in {input_dir.parent}")
    n_kv = int(params.get("n_kv_heads") or n_heads)
    ffn = llama_intermediate_size(dim, int(params.get("multiple_of", 256)),
                                  float(params.get("ffn_dim_multiplier") or 1.0))
    vocab = sentencepiece_vocab_size(tokenizer.read_bytes())
    return MetaLayout(params, shards, tokenizer, dim, n_layers, n_heads, n_kv, ffn, vocab)


#: Meta name -> (HF name, concatenation dim across shards or None for replicated, rotary heads kind).
def _layer_map(i: int) -> list[tuple[str, str, int | None, str | None]]:
    m, h = f"layers.{i}.", f"model.layers.{i}."
    return [
        (m + "attention.wq.weight", h + "self_attn.q_proj.weight", 0, "q"),
        (m + "attention.wk.weight", h + "self_attn.k_proj.weight", 0, "k"),
        (m + "attention.wv.weight", h + "self_attn.v_proj.weight", 0, None),
        (m + "attention.wo.weight", h + "self_attn.o_proj.weight", 1, None),
        (m + "feed_forward.w1.weight", h + "mlp.gate_proj.weight", 0, None),
        (m + "feed_forward.w2.weight", h + "mlp.down_proj.weight", 1, None),
        (m + "feed_forward.w3.weight", h + "mlp.up_proj.weight", 0, None),
        (m + "attention_norm.weight", h + "input_layernorm.weight", None, None),
        (m + "ffn_norm.weight", h + "post_attention_layernorm.weight", None, None),
    ]


def tensor_map(layout: MetaLayout) -> list[tuple[str, str, int | None, str | None]]:
    """(Meta name, HF name, shard concat dim, rotary kind) for every output tensor."""
    rows: list[tuple[str, str, int | None, str | None]] = [
        ("tok_embeddings.weight", "model.embed_tokens.weight", 1, None)]
    for i in range(layout.n_layers):
        rows += _layer_map(i)
    rows += [("norm.weight", "model.norm.weight", None, None), ("output.weight", "lm_head.weight", 0, None)]
    return rows


def _expected_shape(layout: MetaLayout, hf_name: str) -> tuple[int, ...]:
    d, kv = layout.dim, layout.head_dim * layout.n_kv_heads
    if hf_name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return (layout.vocab_size, d)
    if hf_name.endswith(("k_proj.weight", "v_proj.weight")):
        return (kv, d)
    if hf_name.endswith(("q_proj.weight", "o_proj.weight")):
        return (d, d)
    if hf_name.endswith(("gate_proj.weight", "up_proj.weight")):
        return (layout.intermediate_size, d)
    if hf_name.endswith("down_proj.weight"):
        return (d, layout.intermediate_size)
    return (d,)


@dataclass
class MetaTensor:
    """One HF tensor assembled from Meta's tensor-parallel shard slices, read by rows (never whole).

    Rows of column-parallel weights (`cat_dim` 0) come shard after shard, each read straight into the caller's
    buffer; q/k rows are permuted head by head (a head never spans two shards, so permuting each shard's heads
    equals permuting the concatenation); row-parallel weights and the embedding (`cat_dim` 1) are concatenated
    along columns; replicated tensors (`cat_dim` None) come from the first shard.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: list[LazyTensor]
    cat_dim: int | None
    rotary_heads: int
    scratch: torch.Tensor

    @property
    def row_align(self) -> int:
        """One rotary head's rows for q/k (so chunks hold whole heads), else 1."""
        return self.shape[0] // self.rotary_heads if self.rotary_heads else 1

    def span(self, start: int, stop: int) -> list[FileSpan] | None:
        """Rows `start:stop` as byte ranges of the shard files (replicated tensors and column-parallel ones
        without rotary permutation are stored verbatim), else None."""
        if self.cat_dim is None:
            return self.parts[0].span(start, stop)
        if self.cat_dim != 0 or self.rotary_heads:
            return None
        spans: list[FileSpan] = []
        first = 0
        for p in self.parts:
            a, b = max(start, first), min(stop, first + p.shape[0])
            if a < b:
                got = p.span(a - first, b - first)
                if got is None:
                    return None
                spans += got
            first += p.shape[0]
        return spans

    def load_rows(self, start: int, stop: int, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `start:stop` of the HF tensor."""
        if self.cat_dim is None:
            return self.parts[0].load_rows(start, stop, into=into)
        if not all(p.contiguous for p in self.parts):
            whole = torch.cat([p.load() for p in self.parts], dim=self.cat_dim)
            whole = permute_rotary(whole, self.rotary_heads) if self.rotary_heads else whole
            return whole[start:stop].contiguous()
        width = row_numel(self.shape)
        out = into_buffer(into, (stop - start) * width * self.dtype.itemsize).view(self.dtype)
        out = out.view(stop - start, *self.shape[1:])
        if self.cat_dim == 1:
            col = 0
            for p in self.parts:
                out[:, col:col + p.shape[1]] = p.load_rows(start, stop, into=self.scratch)
                col += p.shape[1]
            return out
        align = self.row_align
        lo, hi = start - start % align, min(self.shape[0], stop + (-stop) % align)
        first = 0
        for p in self.parts:
            a, b = max(lo, first), min(hi, first + p.shape[0])
            if a < b and not self.rotary_heads:
                p.load_rows(a - first, b - first, into=_bytes(out[a - start:b - start]))
            elif a < b:
                block = p.load_rows(a - first, b - first, into=self.scratch)
                heads = (b - a) // align
                halves = block.view(heads, align // 2, 2, width).transpose(1, 2)
                if a >= start and b <= stop:
                    out[a - start:b - start].view(heads, 2, align // 2, width).copy_(halves)
                else:
                    rows = halves.reshape(b - a, width)
                    keep_a, keep_b = max(a, start), min(b, stop)
                    out[keep_a - start:keep_b - start] = rows[keep_a - a:keep_b - a]
            first += p.shape[0]
        return out


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def plan_conversion(layout: MetaLayout, shards: list[dict[str, LazyTensor]]) -> list[MetaTensor]:
    """The HF tensors of a Meta checkpoint, checked against `params.json` (shapes) and read when asked."""
    out: list[MetaTensor] = []
    scratch = torch.empty(CHUNK_ELEMENTS * 8 + (64 << 10), dtype=torch.uint8)
    for meta, hf, cat_dim, rotary in tensor_map(layout):
        parts = []
        for k, shard in enumerate(shards):
            if meta not in shard:
                raise ConversionError(f"{layout.shards[k]}: tensor {meta} missing: corrupt or foreign checkpoint")
            parts.append(shard[meta])
        shape = _expected_shape(layout, hf)
        if cat_dim is None:
            got = parts[0].shape
        else:
            got = list(parts[0].shape)
            got[cat_dim] = sum(p.shape[cat_dim] for p in parts)
            got = tuple(got)
        if tuple(got) != shape:
            if cat_dim is not None and got[cat_dim] != shape[cat_dim]:
                hint = f" ({len(shards)} shard file(s) found: a shard missing, or wrong params.json?)"
            elif "embed" in hf or "lm_head" in hf:
                hint = " (the vocabulary size comes from tokenizer.model: wrong tokenizer?)"
            else:
                hint = " (params.json does not describe these weights)"
            raise ConversionError(f"{layout.shards[0].parent}: {meta} assembles to {list(got)}, expected "
                                  f"{list(shape)}{hint}")
        heads = layout.n_heads if rotary == "q" else layout.n_kv_heads if rotary == "k" else 0
        out.append(MetaTensor(hf, shape, parts[0].dtype, parts, cat_dim, heads, scratch))
    return out


def meta_product(input_dir: Path, *, size: str | None = None, llama_version: str = "1") -> Product:
    """The HF tensors, config, generation config and tokenizer files of a Meta checkpoint (nothing read yet
    beyond the shards' pickles)."""
    layout = read_layout(Path(input_dir), size=size)
    tensors = plan_conversion(layout, [open_checkpoint_file(p) for p in layout.shards])
    dtype = tensors[0].dtype

    def write_extras(dest: Path) -> list[str]:
        config = llama_config_dict(
            vocab_size=layout.vocab_size, hidden_size=layout.dim, intermediate_size=layout.intermediate_size,
            num_layers=layout.n_layers, num_heads=layout.n_heads, num_kv_heads=layout.n_kv_heads,
            rms_norm_eps=float(layout.params.get("norm_eps", 1e-6)),
            max_position_embeddings=CONTEXT_LENGTH.get(llama_version, 2048), dtype=dtype_name(dtype),
            rope_theta=float(layout.params.get("rope_theta", 10000.0)))
        (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (dest / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2, sort_keys=True) + "\n")
        before = set(p.name for p in dest.iterdir())
        write_llama_tokenizer(dest, layout.tokenizer.read_bytes())
        return ["config.json", "generation_config.json", *sorted(p.name for p in dest.iterdir()
                                                                 if p.name not in before)]

    return Product(list(tensors), write_extras)


def meta_sources(input_dir: Path, *, size: str | None = None) -> dict[str, Path]:
    """The files a Meta conversion reads, by role (for the step's stamp); for a folder pruned after its
    conversion, as its fetch stamp records them (the tokenizer there, else one level up)."""
    recorded = recorded_files(Path(input_dir))
    if recorded and not (Path(input_dir) / "params.json").is_file():
        inside = Path(input_dir) / "tokenizer.model"
        return {"checkpoint": Path(input_dir),
                "tokenizer": inside if "tokenizer.model" in recorded else Path(input_dir).parent / "tokenizer.model"}
    layout = read_layout(Path(input_dir), size=size)
    return {"checkpoint": Path(input_dir), "tokenizer": layout.tokenizer}


def convert_llama_meta(*, input_dir: Path, out: Path, size: str | None = None, llama_version: str = "1",
                       max_shard_size: int | str = "5GB", cache: Path | None = None,
                       model: str | None = None) -> StageResult:
    """Convert a Meta LLaMA checkpoint to HF safetensors shards + config + tokenizer, keeping its dtype.

    Shards are read lazily (plain reads of the zip records), one output tensor in memory at a time.
    """
    input_dir, out = Path(input_dir), Path(out)
    sources = meta_sources(input_dir, size=size)
    params = {"size": size, "llama_version": llama_version, "max_shard_size": str(max_shard_size)}
    state: dict[str, Product] = {}

    def needed() -> int:
        state["product"] = meta_product(input_dir, size=size, llama_version=llama_version)
        return state["product"].nbytes

    def body(tmp: Path) -> dict[str, Any]:
        product = state["product"]
        files, _ = write_product(product, tmp, max_shard_size=max_shard_size, desc="llama-meta")
        dtype, shards = dtype_name(product.tensors[0].dtype), len(_shard_files(input_dir))
        return {"files": files, "dtype": dtype, "shards_in": shards,
                "summary": f"llama-meta: {shards} shard(s), {len(product.tensors)} tensors ({dtype}) -> {out}"}

    return run_step("llama-meta", out=out, params=params, sources=sources, needed_bytes=needed, body=body,
                    cache=cache, model=model)


def _shard_files(input_dir: Path) -> list[Path]:
    """The `consolidated.NN.pth` files of a Meta checkpoint folder."""
    return sorted(Path(input_dir).glob("consolidated.*.pth"))
