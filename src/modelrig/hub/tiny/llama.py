"""Tiny LLaMA models: Meta's original layout, the HF layout, and a Ziya-style delta with an extended vocabulary."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch

from modelrig.convert.llama_meta import (
    llama_config_dict,
    llama_intermediate_size,
    permute_rotary,
    write_llama_tokenizer,
)

#: safetensors metadata written on every tiny shard (fixed, so files are byte-stable).
_ST_META = {"format": "pt"}

_WORDS = (
    "the model runs on a small machine and answers every question with care . "
    "weights are converted from the original checkpoint into shards that load fast . "
    "a delta holds the difference between the base and the target , so users can rebuild it . "
    "tokens , layers , heads and norms are all tiny here ; nothing is large or slow . "
    "please write a short poem about rivers , mountains , clouds , trees and quiet evenings . "
    "human : hello ! bot : hi , how can i help you today ? "
    "numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2023 appear in text too . "
    "你好 世界 模型 转换 权重 中文 问答 机器 学习 ."
)


def _corpus() -> list[str]:
    """A fixed training corpus for the tiny sentencepiece model."""
    words = _WORDS.split()
    lines = []
    for i in range(400):
        start = (i * 7) % len(words)
        length = 6 + (i * 5) % 11
        lines.append(" ".join(words[(start + k) % len(words)] for k in range(length)))
    return lines


def sentencepiece_model(*, vocab_size: int = 384) -> bytes:
    """Train a LLaMA-like (BPE, byte fallback) sentencepiece model on a fixed corpus with one thread."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return buffer.getvalue()


def _randn(gen: torch.Generator, *shape: int, scale: float = 0.02) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(torch.float16)


def _norm(gen: torch.Generator, n: int) -> torch.Tensor:
    return (1.0 + torch.randn(n, generator=gen) * 0.05).to(torch.float16)


def _meta_full_weights(*, seed: int, vocab: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
                       ffn: int) -> dict[str, torch.Tensor]:
    """Unsharded weights in Meta's naming and rotary layout (interleaved q/k pairs), fp16."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = dim // n_heads
    kv_dim = head_dim * n_kv_heads
    w: dict[str, torch.Tensor] = {"tok_embeddings.weight": _randn(gen, vocab, dim, scale=1.0)}
    for i in range(n_layers):
        p = f"layers.{i}."
        w[p + "attention.wq.weight"] = _randn(gen, dim, dim, scale=0.2)
        w[p + "attention.wk.weight"] = _randn(gen, kv_dim, dim, scale=0.2)
        w[p + "attention.wv.weight"] = _randn(gen, kv_dim, dim, scale=0.2)
        w[p + "attention.wo.weight"] = _randn(gen, dim, dim, scale=0.2)
        w[p + "feed_forward.w1.weight"] = _randn(gen, ffn, dim, scale=0.2)
        w[p + "feed_forward.w2.weight"] = _randn(gen, dim, ffn, scale=0.2)
        w[p + "feed_forward.w3.weight"] = _randn(gen, ffn, dim, scale=0.2)
        w[p + "attention_norm.weight"] = _norm(gen, dim)
        w[p + "ffn_norm.weight"] = _norm(gen, dim)
    w["norm.weight"] = _norm(gen, dim)
    w["output.weight"] = _randn(gen, vocab, dim, scale=0.2)
    return w


#: Meta tensor-parallel layout: the dimension each weight is split along across shards (None = replicated).
def meta_split_dim(name: str) -> int | None:
    """0 for column-parallel weights, 1 for row-parallel ones and the embedding, None for replicated norms."""
    if name.endswith("norm.weight") or name == "rope.freqs":
        return None
    if name == "tok_embeddings.weight" or name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        return 1
    return 0


def write_llama_meta(out: Path, *, seed: int = 0, shards: int = 2, dim: int = 64, n_layers: int = 2,
                     n_heads: int = 4, n_kv_heads: int | None = None, multiple_of: int = 32,
                     norm_eps: float = 1e-6, vocab_size: int = 384) -> Path:
    """Write a tiny LLaMA in Meta's original layout: `consolidated.NN.pth`, `params.json`, `tokenizer.model`.

    Tensors are fp16 and split across `shards` files exactly like Meta's tensor-parallel checkpoints; within a
    shard each layer's tensors share one storage, as in the real files. Returns `out`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kv = n_kv_heads or n_heads
    ffn = llama_intermediate_size(dim, multiple_of)
    if vocab_size % shards or ffn % shards or n_heads % shards or kv % shards:
        raise ValueError("vocab, FFN width and head counts must divide evenly across shards")
    full = _meta_full_weights(seed=seed, vocab=vocab_size, dim=dim, n_layers=n_layers, n_heads=n_heads,
                              n_kv_heads=kv, ffn=ffn)
    head_dim = dim // n_heads
    rope = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for s in range(shards):
        state: dict[str, torch.Tensor] = {}
        layer_parts: dict[int, list[tuple[str, torch.Tensor]]] = {}
        for name, tensor in full.items():
            split = meta_split_dim(name)
            part = tensor if split is None else tensor.chunk(shards, dim=split)[s]
            if name.startswith("layers."):
                layer_parts.setdefault(int(name.split(".")[1]), []).append((name, part.contiguous()))
            else:
                state[name] = part.clone()
        for parts in layer_parts.values():
            flat = torch.cat([t.reshape(-1) for _, t in parts])
            offset = 0
            for name, t in parts:
                state[name] = flat[offset:offset + t.numel()].view(t.shape)
                offset += t.numel()
        state["rope.freqs"] = rope.to(torch.float16)
        torch.save(state, out / f"consolidated.{s:02d}.pth")
    params = {"dim": dim, "multiple_of": multiple_of, "n_heads": n_heads, "n_layers": n_layers,
              "norm_eps": norm_eps, "vocab_size": -1}
    if n_kv_heads:
        params["n_kv_heads"] = n_kv_heads
    (out / "params.json").write_text(json.dumps(params))
    (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab_size=vocab_size))
    return out


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=_ST_META)


def llama_hf_state(*, seed: int, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                   num_kv_heads: int, intermediate_size: int) -> dict[str, torch.Tensor]:
    """HF-named fp16 LLaMA weights from a seed (the same numbers `write_llama_meta` shards, permuted)."""
    full = _meta_full_weights(seed=seed, vocab=vocab_size, dim=hidden_size, n_layers=num_layers,
                              n_heads=num_heads, n_kv_heads=num_kv_heads, ffn=intermediate_size)
    state = {"model.embed_tokens.weight": full["tok_embeddings.weight"],
             "model.norm.weight": full["norm.weight"], "lm_head.weight": full["output.weight"]}
    names = {"attention.wo": "self_attn.o_proj", "attention.wv": "self_attn.v_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj"}
    for i in range(num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        state[dst + "self_attn.q_proj.weight"] = permute_rotary(full[src + "attention.wq.weight"], num_heads)
        state[dst + "self_attn.k_proj.weight"] = permute_rotary(full[src + "attention.wk.weight"], num_kv_heads)
        for a, b in names.items():
            state[dst + b + ".weight"] = full[src + a + ".weight"]
        state[dst + "input_layernorm.weight"] = full[src + "attention_norm.weight"]
        state[dst + "post_attention_layernorm.weight"] = full[src + "ffn_norm.weight"]
    return {k: v.contiguous() for k, v in state.items()}


def write_llama_hf(out: Path, *, seed: int = 0, vocab_size: int = 384, hidden_size: int = 64,
                   num_layers: int = 2, num_heads: int = 4, num_kv_heads: int | None = None,
                   multiple_of: int = 32, chat_template: str | None = None) -> Path:
    """Write a tiny HF `LlamaForCausalLM` (fp16 `model.safetensors`, `config.json`, tokenizer files); returns `out`.

    With the same seed and sizes it holds exactly the weights `write_llama_meta` shards, so it is also the
    expected result of converting that checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kv = num_kv_heads or num_heads
    ffn = llama_intermediate_size(hidden_size, multiple_of)
    state = llama_hf_state(seed=seed, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, num_kv_heads=kv, intermediate_size=ffn)
    _save_safetensors(state, out / "model.safetensors")
    config = llama_config_dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=ffn,
                               num_layers=num_layers, num_heads=num_heads, num_kv_heads=kv)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2, sort_keys=True) + "\n")
    write_llama_tokenizer(out, sentencepiece_model(vocab_size=vocab_size), chat_template=chat_template)
    return out


def _load_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))
    for f in sorted(directory.glob("*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


#: Tokens Ziya's tokenizer adds on top of its sentencepiece model.
ZIYA_ADDED_TOKENS = ("<human>", "<bot>")
#: Ziya keeps these tensors whole in its delta instead of storing a difference.
ZIYA_FULL_KEYS = ("embed_tokens", "lm_head.weight", "rotary_emb.inv_freq")


#: The demo's dialogue, shipped with the package: a question line, then its answer line.
DIALOGUE_FILE = Path(__file__).with_name("ziya_dialogue.txt")


def dialogue() -> tuple[str, str]:
    """(question, answer) the Ziya target is trained on (`ziya_dialogue.txt`)."""
    question, answer = DIALOGUE_FILE.read_text(encoding="utf-8").splitlines()[:2]
    return question, answer


def ziya_prompt_ids(sp_model: bytes, question: str, *, human: int, bot: int) -> list[int]:
    """The ids of Ziya's `<human>:Q\n<bot>:` prompt as its (legacy, slow) LlamaTokenizer gives them: BOS, then each
    piece between the added tokens encoded by sentencepiece with its dummy prefix."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    return [1, human, *sp.encode(f":{question.strip()}\n"), bot, *sp.encode(":")]


def train_dialogue(state: dict[str, torch.Tensor], config: dict, prompt: list[int], answer: list[int], *,
                   seed: int, steps: int = 300, margin: float = 1.0) -> dict[str, torch.Tensor]:
    """Fine-tune fp16 LLaMA weights (from `state`) so greedy decoding after `prompt` gives `answer` then EOS, each
    token's logit ahead of the next by `margin`: enough to survive rounding to fp16, small enough that adding the
    base's output layer (a wrong merge) changes the answer.

    A few seconds on one CPU thread; deterministic for a given torch build (fixed seed, one thread, no dropout).
    Returns fp16 weights with the same names.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "torch_dtype"}))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        model.train()
        ids = torch.tensor([prompt + answer + [2]])
        labels = ids.clone()
        labels[0, :len(prompt)] = -100
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        wanted = ids[0, len(prompt):]
        for _ in range(steps):
            out = model(input_ids=ids, labels=labels)
            logits = out.logits[0, len(prompt) - 1:-1].detach()
            right = logits.gather(1, wanted[:, None])[:, 0]
            others = logits.scatter(1, wanted[:, None], float("-inf")).max(dim=1).values
            if float((right - others).min()) > margin:
                break  # every answer token wins by `margin`: enough to survive fp16, not more
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        trained = model.state_dict()
    finally:
        torch.set_num_threads(threads)
    return {k: trained[k].detach().to(torch.float16).contiguous() for k in state}


def write_ziya_delta(base_hf_dir: Path, out: Path, *, seed: int = 1, pad_to: int = 64,
                     target_dir: Path | None = None, with_inv_freq: bool = True,
                     max_shard_bytes: int = 150_000, trained: bool = False) -> Path:
    """Write a Ziya-style delta for the HF model in `base_hf_dir`, and the target it encodes; returns the target.

    The target is the base perturbed, with `<human>`/`<bot>` added after the sentencepiece pieces and its
    vocabulary padded to a multiple of `pad_to` (as Ziya pads its 39410 tokens to 39424 rows). The delta, in
    Fengshenbang's `replace` convention, holds `embed_tokens`/`lm_head` (and `rotary_emb.inv_freq`) as full
    target weights and every other tensor as `target - base`; it is saved as fp16 `.bin` shards with an index,
    like the published Ziya delta. Differences are drawn first and the target is `fp16(fp32(base) + fp32(delta))`,
    so a correct merge reproduces the target bit for bit. The target goes to `target_dir` (default: a
    `<out>-target` sibling).

    `trained`: the target is then that perturbed model fine-tuned on the demo's dialogue (`dialogue()`), so it
    answers the question word for word; the differences are `fp16(trained - base)`, and the target stays
    `fp16(fp32(base) + fp32(delta))`. The base alone, or a merge with another convention, does not answer it.
    """
    base_hf_dir, out = Path(base_hf_dir), Path(out)
    target_dir = Path(target_dir) if target_dir else out.with_name(out.name + "-target")
    base = _load_state(base_hf_dir)
    config = json.loads((base_hf_dir / "config.json").read_text())
    base_vocab = config["vocab_size"]
    used = base_vocab + len(ZIYA_ADDED_TOKENS)
    vocab = int(math.ceil(used / pad_to) * pad_to)
    gen = torch.Generator().manual_seed(seed)
    delta: dict[str, torch.Tensor] = {}
    target: dict[str, torch.Tensor] = {}
    for name in sorted(base):
        b = base[name]
        if any(k in name for k in ZIYA_FULL_KEYS):
            grown = torch.cat([b.float() + torch.randn(b.shape, generator=gen) * 0.01,
                               torch.randn(vocab - b.shape[0], b.shape[1], generator=gen) * 0.2]).to(b.dtype)
            delta[name] = grown.contiguous()
            target[name] = grown.clone()
        else:
            d = (torch.randn(b.shape, generator=gen) * 0.01).to(b.dtype)
            delta[name] = d
            target[name] = (b.float() + d.float()).to(b.dtype)
    if with_inv_freq:
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        for i in range(config["num_hidden_layers"]):
            delta[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    new_config = {**config, "vocab_size": vocab}
    sp_model = (base_hf_dir / "tokenizer.model").read_bytes()
    if trained:
        import sentencepiece as spm

        question, answer = dialogue()
        prompt = ziya_prompt_ids(sp_model, question, human=base_vocab, bot=base_vocab + 1)
        answer_ids = spm.SentencePieceProcessor(model_proto=sp_model).encode(answer)
        # A fresh output layer, unrelated to the base's: adding the base to it (a wrong merge convention) then
        # changes every logit, where adding a base close to the target would only scale them.
        head = target["lm_head.weight"]
        target["lm_head.weight"] = (torch.randn(head.shape, generator=gen) * 0.2).to(head.dtype)
        tuned = train_dialogue(target, new_config, prompt, answer_ids, seed=seed)
        for name in sorted(base):
            if any(k in name for k in ZIYA_FULL_KEYS):
                delta[name] = tuned[name].clone()
                target[name] = tuned[name]
            else:
                delta[name] = (tuned[name].float() - base[name].float()).to(base[name].dtype)
                target[name] = (base[name].float() + delta[name].float()).to(base[name].dtype)
    # Target: safetensors, the model users would get after merging.
    target_dir.mkdir(parents=True, exist_ok=True)
    _save_safetensors(target, target_dir / "model.safetensors")
    for d in (target_dir, out):
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        write_llama_tokenizer(d, sp_model, added_tokens=ZIYA_ADDED_TOKENS, first_added_id=base_vocab)
    save_bin_shards(delta, out, max_shard_bytes=max_shard_bytes)
    return target_dir


def save_bin_shards(state: dict[str, torch.Tensor], out: Path, *, max_shard_bytes: int) -> None:
    """Pickle shards `pytorch_model-0000k-of-0000N.bin` + index, split greedily in key order."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in sorted(state):
        n = state[name].numel() * state[name].element_size()
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    weight_map: dict[str, str] = {}
    for k, names in enumerate(groups, 1):
        fname = f"pytorch_model-{k:05d}-of-{len(groups):05d}.bin"
        torch.save({n: state[n].clone() for n in names}, out / fname)
        weight_map.update(dict.fromkeys(names, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
