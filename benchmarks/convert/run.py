"""Benchmark the streaming conversions against whole-model approaches and the I/O floor; writes BENCHMARKS.md.

Generates a synthetic LLaMA-shaped fp16 model (hidden 4096, FFN 11008, vocab 32000, 4 layers: about 2.1 GB) as
safetensors shards, a same-shaped `add` delta, Meta `consolidated.NN.pth` shards, `.bin` shards and a Ziya-style
`replace` delta (`.bin` shards, vocabulary grown to 39424 rows), in a temporary folder on the working disk; and a
one-layer model at LLaMA-13B widths (hidden 5120, FFN 13824) to show peak memory at real tensor sizes. Each
measurement runs in its own subprocess, which reports its wall time, peak RSS (VmHWM) and bytes written (wchar).
Inputs are read once before every measurement (warm page cache). Rounds are interleaved (every approach once per
round, in rotating order) and medians reported, since the machine is shared.

    .venv/bin/python benchmarks/convert/run.py [--layers 4] [--rounds 3] [--only merge,meta,...] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Conversions (benchmarks/convert/run.py)"
#: Ziya's vocabulary: 39410 tokens padded to 39424 rows.
ZIYA_VOCAB = 39424


@dataclass(frozen=True)
class Shape:
    """A LLaMA-shaped synthetic model."""

    hidden: int
    ffn: int
    vocab: int
    heads: int
    layers: int

    @property
    def largest_tensor_bytes(self) -> int:
        """The Ziya delta's embedding (its vocabulary is the largest)."""
        return ZIYA_VOCAB * self.hidden * 2


SYNTHETIC = Shape(4096, 11008, 32000, 32, 4)
#: One layer at LLaMA-13B widths: embedding 32000 x 5120 (39424 x 5120 in the Ziya delta), MLP 13824 x 5120.
WIDE_13B = Shape(5120, 13824, 32000, 40, 1)


# ------------------------------------------------------------------------------------------------- inputs


def _config(shape: Shape, vocab: int | None = None) -> dict:
    from modelrig.convert.llama_meta import llama_config_dict

    return llama_config_dict(vocab_size=vocab or shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                             num_layers=shape.layers, num_heads=shape.heads, num_kv_heads=shape.heads)


def _hf_state(shape: Shape, seed: int, scale: float, vocab: int | None = None):
    import torch

    gen = torch.Generator().manual_seed(seed)
    h, f, v = shape.hidden, shape.ffn, vocab or shape.vocab

    def rnd(*dims):
        return (torch.randn(*dims, generator=gen) * scale).to(torch.float16)

    state = {"model.embed_tokens.weight": rnd(v, h), "lm_head.weight": rnd(v, h), "model.norm.weight": rnd(h)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{n}.weight"] = rnd(h, h)
        state[p + "mlp.gate_proj.weight"] = rnd(f, h)
        state[p + "mlp.up_proj.weight"] = rnd(f, h)
        state[p + "mlp.down_proj.weight"] = rnd(h, f)
        state[p + "input_layernorm.weight"] = rnd(h)
        state[p + "post_attention_layernorm.weight"] = rnd(h)
    return state


def _write_meta(out: Path, shape: Shape, base: dict) -> None:
    """Meta layout of `base`: two tensor-parallel shards (undoing the rotary permutation is irrelevant here)."""
    import torch

    from modelrig.hub.tiny import meta_split_dim

    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "norm.weight"}
    hf_to_meta = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                  "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                  "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                  "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
                  "post_attention_layernorm": "ffn_norm"}
    for i in range(shape.layers):
        for a, b in hf_to_meta.items():
            names[f"model.layers.{i}.{a}.weight"] = f"layers.{i}.{b}.weight"
    out.mkdir()
    for s in range(2):
        shard = {}
        for hf, meta in names.items():
            dim = meta_split_dim(meta)
            shard[meta] = base[hf] if dim is None else base[hf].chunk(2, dim=dim)[s].clone()
        torch.save(shard, out / f"consolidated.{s:02d}.pth")
        del shard
    (out / "params.json").write_text(json.dumps(
        {"dim": shape.hidden, "multiple_of": 256, "n_heads": shape.heads, "n_layers": shape.layers,
         "norm_eps": 1e-6, "vocab_size": -1}))
    (out / "tokenizer.model").write_bytes(_sp_model(shape.vocab))


def _write_ziya_delta(out: Path, shape: Shape, base: dict) -> None:
    """A `replace` delta like Ziya's: full embed_tokens/lm_head (the base's, fine-tuned, with the vocabulary grown
    to ZIYA_VOCAB rows), small differences elsewhere, as ~1 GB `.bin` shards with an index, config, tokenizer."""
    import torch
    from huggingface_hub import save_torch_state_dict

    out.mkdir()
    delta = _hf_state(shape, 2, 0.001)
    grown = _hf_state(Shape(shape.hidden, shape.ffn, ZIYA_VOCAB - shape.vocab, shape.heads, 0), 3, 0.02)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        delta[name] = torch.cat([base[name] + delta[name], grown[name]])
    save_torch_state_dict(delta, out, max_shard_size="1GB", safe_serialization=False)
    (out / "config.json").write_text(json.dumps(_config(shape, ZIYA_VOCAB)))
    (out / "tokenizer.model").write_bytes(_sp_model(shape.vocab))


def generate(work: Path, shape: Shape, *, only: set[str]) -> dict[str, Path]:
    """Write the inputs the chosen operations read."""
    from huggingface_hub import save_torch_state_dict

    paths = {k: work / k for k in ("base", "delta", "meta", "bin", "ziya")}
    work.mkdir(parents=True, exist_ok=True)
    base = _hf_state(shape, 0, 0.02)
    if "merge" in only:
        for key, state in (("base", base), ("delta", _hf_state(shape, 1, 0.001))):
            paths[key].mkdir()
            save_torch_state_dict(state, paths[key], max_shard_size="700MB")
            (paths[key] / "config.json").write_text(json.dumps(_config(shape)))
    if "safetensors" in only:
        paths["bin"].mkdir()
        save_torch_state_dict(base, paths["bin"], max_shard_size="700MB", safe_serialization=False)
        (paths["bin"] / "config.json").write_text(json.dumps(_config(shape)))
    if only & {"meta", "chain", "wide"}:
        _write_meta(paths["meta"], shape, base)
    if only & {"chain", "wide"}:
        _write_ziya_delta(paths["ziya"], shape, base)
    return paths


def _sp_model(vocab: int) -> bytes:
    """A sentencepiece model with exactly `vocab` pieces (built by editing a tiny one's proto)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from modelrig.hub.tiny import sentencepiece_model

    proto = pb.ModelProto()
    proto.ParseFromString(sentencepiece_model())
    i = 0
    while len(proto.pieces) < vocab:
        piece = proto.pieces.add()
        piece.piece = f"▁bench{i}"
        piece.score = -1000.0 - i
        i += 1
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------------------- children


def _proc_stats() -> dict:
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"peak_rss_mib": hwm, "wchar": int(io["wchar"])}


def _io_floor(inputs: list[Path], out_bytes: int, out: Path) -> None:
    buf = bytearray(16 << 20)
    for f in inputs:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    out.mkdir()
    with open(out / "floor.bin", "wb") as fh:
        left = out_bytes
        while left > 0:
            n = min(left, len(buf))
            fh.write(memoryview(buf)[:n])
            left -= n
        fh.flush()
        os.fsync(fh.fileno())


def _chain_manifest(meta: Path, ziya: Path):
    """The Ziya-LLaMA chain (Meta -> HF, replace-delta merge, safetensors) over local folders."""
    from modelrig.manifest import Manifest

    return Manifest.model_validate({
        "id": "bench-ziya", "title": "bench", "license": {"name": "x"},
        "weights": {"base": {"local": {"var": "meta", "path": str(meta)}, "format": "meta-llama"},
                    "delta": {"local": {"var": "ziya", "path": str(ziya)}}},
        "convert": [{"kind": "llama_meta_to_hf", "input": "base", "output": "base_hf"},
                    {"kind": "apply_delta", "base": "base_hf", "delta": "delta", "convention": "replace",
                     "output": "merged"},
                    {"kind": "to_safetensors", "input": "merged", "output": "final"}],
        "env": {"python": "3.11"}, "resources": {"params_b": 1, "memory_gb": {"fp16": 1}}})


def child(task: str, paths: dict[str, Path], out: Path, extra: dict) -> None:
    import torch

    cache = Path(extra["cache"]) if extra.get("cache") else None
    if task in ("merge", "merge-known"):
        from modelrig.convert.delta import apply_delta

        apply_delta(base=paths["base"], delta=paths["delta"], out=out, convention="add", check=False, cache=cache)
    elif task == "merge-naive":
        from transformers import LlamaForCausalLM

        base = LlamaForCausalLM.from_pretrained(str(paths["base"]), torch_dtype=torch.float16)
        delta = LlamaForCausalLM.from_pretrained(str(paths["delta"]), torch_dtype=torch.float16)
        dstate = delta.state_dict()
        for name, param in base.state_dict().items():
            param.data += dstate[name]
        base.save_pretrained(str(out))
    elif task in ("meta", "meta-known"):
        from modelrig.convert.llama_meta import convert_llama_meta

        convert_llama_meta(input_dir=paths["meta"], out=out, cache=cache)
    elif task == "meta-naive":
        from safetensors.torch import save_file

        from modelrig.convert.llama_meta import permute_rotary
        from modelrig.hub.tiny import meta_split_dim

        shards = [torch.load(p, map_location="cpu", weights_only=True)
                  for p in sorted(paths["meta"].glob("consolidated.*.pth"))]
        heads = json.loads((paths["meta"] / "params.json").read_text())["n_heads"]
        state = {}
        for name in shards[0]:
            dim = meta_split_dim(name)
            t = shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim=dim)
            if name.endswith(("wq.weight", "wk.weight")):
                t = permute_rotary(t, heads)
            state[name] = t.contiguous()
        del shards
        out.mkdir()
        save_file(state, str(out / "model.safetensors"))
    elif task in ("safetensors", "safetensors-known"):
        from modelrig.convert.safetensors_convert import convert_to_safetensors

        convert_to_safetensors(source=paths["bin"], out=out, cache=cache)
    elif task == "safetensors-naive":
        from huggingface_hub import save_torch_state_dict

        state = {}
        for f in sorted(paths["bin"].glob("*.bin")):
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        out.mkdir()
        save_torch_state_dict(state, out)
    elif task in ("chain", "chain-known", "chain-steps", "wide"):
        from modelrig.config import Context, DataRoot, HostConfig
        from modelrig.convert.pipeline import run_pipeline

        ctx = Context(data=DataRoot(out), config=HostConfig())
        manifest = _chain_manifest(paths["meta"], paths["ziya"])
        if cache is not None:
            ctx.data.cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache, ctx.data.cache / "digests.json")
        result = run_pipeline(manifest, ctx, inputs={"base": str(paths["meta"]), "delta": str(paths["ziya"])},
                              keep_intermediates=task == "chain-steps")
        assert result.changed
    elif task.startswith("floor-"):
        _io_floor([Path(p) for p in extra["inputs"]], extra["out_bytes"], out)
    else:
        raise SystemExit(f"unknown task {task}")
    print(json.dumps(_proc_stats()))


# ------------------------------------------------------------------------------------------------- driver


def _files(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(p for pat in patterns for p in directory.glob(pat))


def _warm(files: list[Path]) -> None:
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _final_bytes(out: Path) -> int:
    final = out / "models" / "bench-ziya" / "final"
    root = final if final.is_dir() else out
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def measure(task: str, paths: dict[str, Path], work: Path, inputs: list[Path], extra: dict | None = None) -> dict:
    out = work / f"out-{task}"
    shutil.rmtree(out, ignore_errors=True)
    _warm(inputs)
    env = {**os.environ, "MODELRIG_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, __file__, "--child", task, "--paths", json.dumps({k: str(v) for k, v in paths.items()}),
           "--out", str(out), "--extra", json.dumps(extra or {})]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"task": task, "wall_s": round(wall, 2), "peak_rss_mib": round(report["peak_rss_mib"]),
           "read_bytes": sum(p.stat().st_size for p in inputs), "written_bytes": report["wchar"],
           "output_bytes": _final_bytes(out)}
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), file=sys.stderr)
    return row


def _median(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for key in ("wall_s", "peak_rss_mib", "written_bytes", "output_bytes"):
        out[key] = statistics.median(r[key] for r in rows)
    out["walls"] = [r["wall_s"] for r in rows]
    return out


def _cache_digests(work: Path, inputs: list[Path]) -> str:
    from modelrig.convert.step import file_digests

    cache = work / "cache" / "digests.json"
    file_digests(inputs, cache=cache)
    return str(cache)


def run(work: Path, shape: Shape, *, rounds: int, only: set[str]) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    paths = generate(work / "synthetic", shape, only=only - {"wide"}) if only - {"wide"} else {}
    gen_s = time.perf_counter() - t0
    st, bins, pth = ("*.safetensors",), ("*.bin",), ("*.pth", "tokenizer.model")
    groups: dict[str, tuple[list[Path], list[str]]] = {}
    if "merge" in only:
        inputs = _files(paths["base"], st) + _files(paths["delta"], st)
        groups["merge"] = (inputs, ["merge", "merge-known", "merge-naive"])
    if "meta" in only:
        groups["meta"] = (_files(paths["meta"], pth), ["meta", "meta-known", "meta-naive"])
    if "safetensors" in only:
        groups["safetensors"] = (_files(paths["bin"], bins), ["safetensors", "safetensors-known", "safetensors-naive"])
    if "chain" in only:
        inputs = _files(paths["meta"], pth) + _files(paths["ziya"], bins)
        groups["chain"] = (inputs, ["chain", "chain-known", "chain-steps"])
    caches = {}
    for op, (inputs, _tasks) in groups.items():
        every = inputs + [p for d in {f.parent for f in inputs} for p in d.glob("*.json")]
        caches[op] = _cache_digests(work / op, every)
    rows: dict[str, list[dict]] = {}
    for r in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        rows.setdefault("import-torch", []).append({"task": "import-torch", "wall_s": time.perf_counter() - start,
                                                    "peak_rss_mib": 0, "read_bytes": 0, "written_bytes": 0,
                                                    "output_bytes": 0})
        for op, (inputs, tasks) in groups.items():
            order = tasks[r % len(tasks):] + tasks[:r % len(tasks)]
            for task in order:
                extra = {"cache": caches[op]} if task.endswith("-known") else {}
                rows.setdefault(task, []).append(measure(task, paths, work, inputs, extra))
            out_bytes = int(statistics.median(x["output_bytes"] for x in rows[tasks[0]]))
            rows.setdefault(f"floor-{op}", []).append(measure(
                f"floor-{op}", paths, work, inputs, {"inputs": [str(p) for p in inputs], "out_bytes": out_bytes}))
    results = {task: _median(r) for task, r in rows.items()}
    wide = None
    if "wide" in only:
        wide_paths = generate(work / "wide", WIDE_13B, only={"wide"})
        inputs = _files(wide_paths["meta"], pth) + _files(wide_paths["ziya"], bins)
        wide = _median([measure("wide", wide_paths, work, inputs) for _ in range(rounds)])
        wide["largest_tensor_bytes"] = WIDE_13B.largest_tensor_bytes
        shutil.rmtree(work / "wide", ignore_errors=True)
    meta = paths.get("meta")
    model_bytes = sum(p.stat().st_size for p in _files(meta, ("*.pth",))) if meta and meta.exists() else 0
    return {"results": results, "wide": wide, "largest_tensor_bytes": shape.largest_tensor_bytes,
            "model_bytes": model_bytes, "layers": shape.layers, "rounds": rounds, "generate_s": round(gen_s, 1),
            "load": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


#: Real sizes for the projections (GB, 1e9 bytes): Meta LLaMA-13B shards, the Ziya delta (28 .bin shards), the
#: merged output; Ziya-BLIP2's visual part is one 4.38 GB fp32 pickle and is used as fetched.
ZIYA_META_GB, ZIYA_DELTA_GB, ZIYA_FINAL_GB, BLIP2_VISUAL_GB = 26.0, 26.2, 26.0, 4.38
LABELS = {
    "merge": ("delta merge (`add`)", {
        "merge": "modelrig streaming (first run: hashes its inputs)",
        "merge-known": "modelrig streaming, input digests known (after `fetch`)",
        "merge-naive": "transformers: load base + delta, add, `save_pretrained`"}),
    "meta": ("llama-meta (2 shards)", {
        "meta": "modelrig streaming (first run: hashes its inputs)",
        "meta-known": "modelrig streaming, input digests known (cache)",
        "meta-naive": "load all shards whole, concatenate, `save_file`"}),
    "safetensors": (".bin -> safetensors", {
        "safetensors": "modelrig streaming (first run: hashes its inputs)",
        "safetensors-known": "modelrig streaming, input digests known (fetch stamp / cache)",
        "safetensors-naive": "load all shards whole, `save_torch_state_dict`"}),
    "chain": ("Ziya chain: Meta -> HF -> `replace` merge -> safetensors", {
        "chain": "modelrig fused, one pass (first run: hashes its inputs)",
        "chain-known": "modelrig fused, one pass, input digests known (after `fetch`)",
        "chain-steps": "modelrig step by step (`--keep-intermediates`), first run"}),
}


def markdown(data: dict) -> str:
    res = data["results"]
    largest_mib = data["largest_tensor_bytes"] / 2**20
    lines = [
        SECTION,
        "",
        f"Synthetic LLaMA-shaped fp16 model: hidden 4096, FFN 11008, vocab 32000, {data['layers']} layers = "
        f"{data['model_bytes'] / 1e9:.2f} GB (the Ziya-style `replace` delta grows embed_tokens/lm_head to "
        f"{ZIYA_VOCAB} rows: largest tensor {largest_mib:.0f} MiB). Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work (load average {data['load'][0]} at the start, "
        f"{data['load'][1]} at the end), warm page cache (inputs read just before each measurement), every "
        f"measurement its own process; {data['rounds']} interleaved rounds, medians (all walls in the last column). "
        "Peak RSS = VmHWM, including the interpreter and torch (about 235 MiB, see the floor rows); written = "
        "bytes the process wrote (wchar), an upper bound of the extra disk it took. The I/O floor reads the same "
        "inputs once and writes the output's size once with one fsync, no hashing or computing. Reproduce: "
        "`.venv/bin/python benchmarks/convert/run.py`.",
        "",
        "| operation | approach | wall (s), median | peak RSS (MiB) | read (GB) | written (GB) | wall / I/O floor |"
        " same round: wall / floor, median | RSS / largest tensor | walls (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for op, (name, approaches) in LABELS.items():
        if f"floor-{op}" not in res:
            continue
        floor = res[f"floor-{op}"]["wall_s"]
        for task, label in [*approaches.items(), (f"floor-{op}", "I/O floor")]:
            r = res[task]
            lines.append(f"| {name} | {label} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['read_bytes'] / 1e9:.2f} | {r['written_bytes'] / 1e9:.2f} | {r['wall_s'] / floor:.2f}x | "
                         f"{_paired(res, task, op):.2f}x | {r['peak_rss_mib'] / largest_mib:.1f}x | "
                         f"{', '.join(f'{w:.1f}' for w in r['walls'])} |")
    wide = data.get("wide")
    if wide:
        wl = wide["largest_tensor_bytes"] / 2**20
        lines += ["", f"At LLaMA-13B widths (one layer: Meta embedding 32000 x 5120, MLP 13824 x 5120, Ziya delta "
                      f"embedding {ZIYA_VOCAB} x 5120 = {wl:.0f} MiB, {wide['read_bytes'] / 1e9:.2f} GB read), the "
                      f"fused chain peaks at {wide['peak_rss_mib']:.0f} MiB RSS ({wide['peak_rss_mib'] / wl:.1f}x "
                      f"the largest tensor; walls {', '.join(f'{w:.1f}' for w in wide['walls'])} s): memory is two "
                      "8 MiB chunk buffers plus scratch, not a tensor, so it does not grow with the model."]
    if "import-torch" in res:
        imp = res["import-torch"]
        lines += ["", f"Starting Python and importing torch alone took {imp['wall_s']:.1f} s (median; walls "
                      f"{', '.join(f'{w:.1f}' for w in imp['walls'])} s) in the same rounds: a fixed cost every "
                      "approach but the I/O floor pays (the floor process imports nothing)."]
    if "chain-known" in res:
        lines += ["", _projection(data)]
    lines += ["", _verdicts(data), "", _noise(data), ""]
    return "\n".join(lines)


def _noise(data: dict) -> str:
    res = data["results"]
    floors = {op: res[f"floor-{op}"]["walls"] for op in LABELS if f"floor-{op}" in res}
    spread = max(max(w) / min(w) for w in floors.values())
    imp = res.get("import-torch", {}).get("wall_s", 0.0)
    return (f"Reading these numbers: the same I/O floor took up to {spread:.1f}x longer in one round than in another "
            "(other engineers' builds and tests share the two cores and the disk), so single ratios move by more "
            "than the 1.3x target between rounds; the same-round ratios are the fairer comparison. What separates "
            "modelrig from the floor is fixed or necessary work the floor skips: starting Python with torch "
            f"({imp:.1f} s median here), sha256 of every byte written (the stamp's output digests) and, on a first "
            "run, of every byte read (the idempotency key; after `fetch` those digests come from its stamp).")


def _paired(res: dict, task: str, op: str) -> float:
    """The median over rounds of this approach's wall divided by the floor's wall in the same round (robust to
    load that changes between rounds)."""
    floor = res[f"floor-{op}"]["walls"]
    return statistics.median(w / f for w, f in zip(res[task]["walls"], floor, strict=True))


def _projection(data: dict) -> str:
    res = data["results"]
    known, first = res["chain-known"], res["chain"]
    moved = known["read_bytes"] + known["output_bytes"]
    rate, rate_first = moved / known["wall_s"], moved / first["wall_s"]
    real_moved = (ZIYA_META_GB + ZIYA_DELTA_GB + ZIYA_FINAL_GB) * 1e9
    wide = data.get("wide") or known
    steps = res["chain-steps"]
    steps_moved = steps["read_bytes"] + steps["written_bytes"]
    return (
        "Projection for the real installs, from the measured throughput of the fused chain here (bytes read + "
        f"written per second: {rate / 1e9:.2f} GB/s with known input digests, {rate_first / 1e9:.2f} GB/s on a "
        "first run that also hashes its inputs; the step-by-step run moved "
        f"{steps_moved / 1e9:.1f} GB for the same result): `modelrig convert ziya-llama-13b-v1` reads "
        f"{ZIYA_META_GB:g} GB of Meta shards and the {ZIYA_DELTA_GB:g} GB delta and writes {ZIYA_FINAL_GB:g} GB, "
        f"about {real_moved / rate / 60:.0f} min after `fetch` ({real_moved / rate_first / 60:.0f} min hashing "
        f"inputs) on a disk like this one, peak RAM about {wide['peak_rss_mib']:.0f} MiB (the 13B-width run above), "
        f"peak disk beyond the downloads {ZIYA_FINAL_GB:g} GB (the final output; step by step it was "
        f"{3 * ZIYA_FINAL_GB:g} GB). Ziya-BLIP2-14B-Visual adds only its {BLIP2_VISUAL_GB:g} GB download (used "
        f"as fetched), so its install peaks at {ZIYA_DELTA_GB + BLIP2_VISUAL_GB:.1f} GB of downloads + "
        f"{ZIYA_FINAL_GB:g} GB converted (`modelrig plan` asks for that plus 10% and 2 GB: 64 GB instead of "
        "121 GB), with the user's own Meta checkpoint read in place. These scale linearly with bytes; a faster "
        "or slower disk changes the minutes, not the memory or disk figures.")


def _verdicts(data: dict) -> str:
    res = data["results"]
    parts = []
    for op, task in (("merge", "merge-known"), ("meta", "meta"), ("meta", "meta-known"),
                     ("safetensors", "safetensors"), ("safetensors", "safetensors-known"),
                     ("chain", "chain-known"), ("chain", "chain")):
        if task not in res:
            continue
        ours = res[task]
        naive = res.get(f"{op}-naive") or res.get(f"{op}-steps")
        vs = ""
        if naive:
            ratio = statistics.median(a / b for a, b in zip(ours["walls"], naive["walls"], strict=True))
            vs = f", {ratio:.2f}x the wall of {'naive' if op != 'chain' else 'step by step'} in the same round"
        parts.append(f"{task}: {_paired(res, task, op):.2f}x the floor (same-round median){vs}, "
                     f"{ours['peak_rss_mib'] / (data['largest_tensor_bytes'] / 2**20):.1f}x the largest tensor")
    return "Against the targets (wall <= 1.3x the I/O floor, faster than the naive approach, peak RSS <= 3x the " \
           "largest tensor), same-round medians: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="merge,meta,safetensors,chain,wide",
                        help="comma-separated operations: merge, meta, safetensors, chain, wide")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "modelrig-bench-convert")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, {k: Path(v) for k, v in json.loads(args.paths).items()}, args.out, json.loads(args.extra))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    shape = Shape(SYNTHETIC.hidden, SYNTHETIC.ffn, SYNTHETIC.vocab, SYNTHETIC.heads, args.layers)
    try:
        data = run(work, shape, rounds=args.rounds, only=set(args.only.split(",")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.workdir / "last.json").write_text(json.dumps(data, indent=2))
    text = markdown(data)
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(REPO))
        from benchmarks.report import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
