"""Benchmark the streaming conversions against whole-model approaches and the I/O floor; writes BENCHMARKS.md.

Generates a synthetic LLaMA-shaped fp16 model (hidden 4096, FFN 11008, vocab 32000, 4 layers: about 2.1 GB) as
safetensors shards, a same-shaped `add` delta, Meta `consolidated.NN.pth` shards, `.bin` shards and a Ziya-style
`replace` delta (`.bin` shards, vocabulary grown to 39424 rows), in a temporary folder on the working disk; and a
one-layer model at LLaMA-13B widths (hidden 5120, FFN 13824) to show peak memory at real tensor sizes. Each
measurement runs in its own subprocess, which reports its wall time, peak RSS (VmHWM) and bytes written (wchar).
Inputs are read once before every measurement (warm page cache). Rounds are interleaved (every approach once per
round, in rotating order) and medians reported, since the machine is shared.

With `--anchors-dir DIR` (made by `benchmarks/convert/anchors.py`) the delta merge also runs the public scripts that
do the same job, unmodified, from their own venv: FastChat's `apply_delta.py` (both modes; `--low-cpu-mem` reads
only `.bin` shards, so it gets `.bin` copies of the same tensors) and Fengshenbang-LM's (embed_tokens/lm_head
replaced, the rest added: modelrig's `replace`). Their outputs are compared tensor by tensor with modelrig's merge
of the same inputs (`add`, and `replace` for Fengshenbang's). Without it the anchor rows are reported as not run.

    .venv/bin/python benchmarks/convert/run.py [--layers 4] [--rounds 3] [--only merge,meta,...] [--no-write]
        [--anchors-dir DIR | --anchor-python PY --anchor-fastchat FILE --anchor-fengshenbang FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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


def generate(work: Path, shape: Shape, *, only: set[str], bin_copies: bool = False) -> dict[str, Path]:
    """Write the inputs the chosen operations read. The merge's base and delta are HF folders (safetensors shards,
    config, sentencepiece tokenizer, as the anchors expect); `bin_copies` adds `.bin` copies of both (`base-bin`,
    `delta-bin`) for FastChat's `--low-cpu-mem` mode, which reads nothing else."""
    from huggingface_hub import save_torch_state_dict

    paths = {k: work / k for k in ("base", "delta", "meta", "bin", "ziya", "base-bin", "delta-bin")}
    work.mkdir(parents=True, exist_ok=True)
    base = _hf_state(shape, 0, 0.02)
    if "merge" in only:
        tokenizer = _sp_model(shape.vocab)
        for key, state in (("base", base), ("delta", _hf_state(shape, 1, 0.001))):
            for folder, safe in ((key, True), (f"{key}-bin", False)) if bin_copies else ((key, True),):
                paths[folder].mkdir()
                save_torch_state_dict(state, paths[folder], max_shard_size="700MB", safe_serialization=safe)
                (paths[folder] / "config.json").write_text(json.dumps(_config(shape)))
                (paths[folder] / "tokenizer.model").write_bytes(tokenizer)
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
    """Peak RSS (this process's VmHWM, or a waited-for child's if larger: a conversion run in another env) and
    bytes written."""
    import resource

    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    hwm = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
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
    if task in ("merge", "merge-known", "merge-replace"):
        from modelrig.convert.delta import apply_delta

        convention = "replace" if task == "merge-replace" else "add"
        apply_delta(base=paths["base"], delta=paths["delta"], out=out, convention=convention, check=False,
                    cache=cache)
    elif task.startswith("anchor-"):
        import runpy

        # The public script, as it is, in this process (so that its memory and writes are measured like ours).
        base, delta = ("base-bin", "delta-bin") if task.endswith("-lowmem") else ("base", "delta")
        sys.argv = [extra["script"], "--base-model-path", str(paths[base]), "--target-model-path", str(out),
                    "--delta-path", str(paths[delta]), *(["--low-cpu-mem"] if "-lowmem" in task else [])]
        runpy.run_path(extra["script"], run_name="__main__")
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
    elif task in ("resave", "resave-sync"):
        # What a user would otherwise run: transformers loads the `.bin` model and saves it again (safetensors is
        # save_pretrained's only format in transformers 5); "-sync" adds the `sync` that makes it durable.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(paths["bin"]), dtype=torch.float16)
        model.save_pretrained(str(out))
        if task == "resave-sync":
            os.sync()
    elif task == "tf-bert":
        from modelrig.convert.tf import convert_tf1

        convert_tf1(checkpoint=paths["tf-bert"] / "bert_model.ckpt", config=paths["tf-bert"] / "bert_config.json",
                    out=out, python=extra["tf_python"], cache=cache)
    elif task == "tf-bert-transformers":
        # transformers' own conversion in the TF conversion env (this child runs under its interpreter).
        import transformers

        config = transformers.BertConfig.from_json_file(str(paths["tf-bert"] / "bert_config.json"))
        model = transformers.BertForPreTraining(config)
        transformers.load_tf_weights_in_bert(model, config, str(paths["tf-bert"] / "bert_model.ckpt"))
        model.save_pretrained(str(out))
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


def _run_child(task: str, paths: dict[str, Path], out: Path, extra: dict | None,
               python: str | None) -> tuple[subprocess.CompletedProcess, float]:
    """Run one measurement's process: this script's child mode, under the anchors' interpreter when `python` is
    given (then without the toolkit's sources on the path, offline, its temporary files in the work folder)."""
    env = {**os.environ, "MODELRIG_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src")}
    if python:
        tmp = out.parent / "anchor-tmp"
        tmp.mkdir(exist_ok=True)
        env.pop("PYTHONPATH")
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(out.parent / "anchor-hf-home"), TMPDIR=str(tmp))
    cmd = [python or sys.executable, __file__, "--child", task, "--paths",
           json.dumps({k: str(v) for k, v in paths.items()}), "--out", str(out), "--extra", json.dumps(extra or {})]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    return proc, time.perf_counter() - start


@contextlib.contextmanager
def sampled_disk(folder: Path, every: float = 0.005) -> Iterator[dict]:
    """Within this block, a thread samples the free space of `folder`'s filesystem every `every` seconds; on exit
    `["peak_bytes"]` holds the most it fell below its level at the start (the peak extra disk, temporaries that
    were deleted again included)."""
    before = shutil.disk_usage(folder).free
    lowest = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            lowest[0] = min(lowest[0], shutil.disk_usage(folder).free)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    found: dict = {}
    try:
        yield found
    finally:
        stop.set()
        thread.join()
        found["peak_bytes"] = max(0, before - lowest[0])


def _last_error(stderr: str) -> str:
    """The exception line of a traceback (the last line that is not blank or a progress bar)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "it/s]" not in line]
    return lines[-1] if lines else "no output"


def measure(task: str, paths: dict[str, Path], work: Path, inputs: list[Path], extra: dict | None = None, *,
            python: str | None = None, compare: Path | None = None) -> dict:
    """One measured run. A failing anchor (`python` given) gives a row with its `error` instead of stopping the
    benchmark; `compare` (a modelrig output) adds `same`, the tensor-by-tensor comparison of the outputs."""
    out = work / f"out-{task}"
    shutil.rmtree(out, ignore_errors=True)
    _warm(inputs)
    with sampled_disk(work) as disk:
        proc, wall = _run_child(task, paths, out, extra, python)
    if proc.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        if python:
            row = {"task": task, "error": _last_error(proc.stderr)}
            print(json.dumps(row), file=sys.stderr)
            return row
        raise SystemExit(f"{task} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"task": task, "wall_s": round(wall, 2), "peak_rss_mib": round(report["peak_rss_mib"]),
           "read_bytes": sum(p.stat().st_size for p in inputs), "written_bytes": report["wchar"],
           "output_bytes": _final_bytes(out), "peak_disk_bytes": disk["peak_bytes"]}
    if compare is not None:
        row["same"] = compare_outputs(compare, out)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), file=sys.stderr)
    return row


def _tensors(directory: Path, stack: contextlib.ExitStack) -> dict[str, Callable[[], object]]:
    """Every tensor of a model folder by name, as a loader: safetensors opened lazily, weight-only pickles
    memory-mapped."""
    import torch
    from safetensors import safe_open

    found: dict[str, Callable[[], object]] = {}
    for f in sorted(directory.glob("*.safetensors")):
        handle = stack.enter_context(safe_open(str(f), "pt"))
        found.update({name: functools.partial(handle.get_tensor, name) for name in handle.keys()})
    for f in sorted(directory.glob("*.bin")):
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        found.update({name: functools.partial(state.__getitem__, name) for name in state})
    return found


def _ordered_bits(t):
    """The tensor's bit patterns as integers ordered like the floats (so a difference counts ulps)."""
    import torch

    kind, wide, sign = {2: (torch.int16, torch.int32, 0x7FFF), 4: (torch.int32, torch.int64, 0x7FFFFFFF)}[
        t.element_size()]
    bits = t.contiguous().view(kind).to(wide)
    return torch.where(bits < 0, -(bits & sign), bits)


def compare_outputs(ours: Path, theirs: Path) -> dict:
    """Compare two model folders tensor by tensor: names, dtypes, shapes, bit-identical tensors, and for the rest
    how many elements differ and by at most how many ulps (of the stored dtype, 2- or 4-byte floats)."""

    with contextlib.ExitStack() as stack:
        mine, other = _tensors(ours, stack), _tensors(theirs, stack)
        identical, differing, max_ulp, mismatched = 0, 0, 0, []
        for name in sorted(set(mine) & set(other)):
            o, t = mine[name](), other[name]()
            if o.dtype != t.dtype or o.shape != t.shape:
                mismatched.append(f"{name}: {t.dtype} {tuple(t.shape)} vs {o.dtype} {tuple(o.shape)}")
                continue
            ulps = (_ordered_bits(o) - _ordered_bits(t)).abs()
            if not bool(ulps.any()):
                identical += 1
                continue
            differing += int((ulps > 0).sum())
            max_ulp = max(max_ulp, int(ulps.max()))
    return {"tensors": len(mine), "identical": identical, "differing_elements": differing, "max_ulp": max_ulp,
            "missing": sorted(set(mine) - set(other)), "extra": sorted(set(other) - set(mine)),
            "mismatched": mismatched}


def same_summary(same: dict, convention: str) -> str:
    """One phrase for a comparison from `compare_outputs`."""
    n, problems = same["tensors"], []
    if same["missing"]:
        problems.append(f"{len(same['missing'])} tensors missing ({', '.join(same['missing'][:3])})")
    if same["extra"]:
        problems.append(f"{len(same['extra'])} extra tensors ({', '.join(same['extra'][:3])})")
    if same["mismatched"]:
        problems.append(f"{len(same['mismatched'])} with another dtype or shape ({same['mismatched'][0]})")
    if same["identical"] == n and not problems:
        return f"bit-identical to modelrig's `{convention}` merge (all {n} tensors)"
    if not problems and same["max_ulp"] <= 1:
        return (f"equal to modelrig's `{convention}` merge within fp16 rounding ({same['identical']} of {n} "
                f"tensors bit-identical, {same['differing_elements']} elements 1 ulp apart)")
    return (f"differs from modelrig's `{convention}` merge: {same['identical']} of {n} tensors bit-identical, "
            f"{same['differing_elements']} elements up to {same['max_ulp']} ulps apart"
            + (f"; {'; '.join(problems)}" if problems else ""))


def _median(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for key in ("wall_s", "peak_rss_mib", "written_bytes", "output_bytes", "peak_disk_bytes"):
        if all(key in r for r in rows):
            out[key] = statistics.median(r[key] for r in rows)
    out["walls"] = [r["wall_s"] for r in rows]
    return out


def _cache_digests(work: Path, inputs: list[Path]) -> str:
    from modelrig.convert.step import file_digests

    cache = work / "cache" / "digests.json"
    file_digests(inputs, cache=cache)
    return str(cache)


def _references(paths: dict[str, Path], work: Path, conventions: set[str]) -> dict[str, Path]:
    """modelrig's merges of the benchmark's base and delta that the anchors' outputs are compared with."""
    refs = {}
    for convention in sorted(conventions):
        out = work / f"ref-{convention}"
        proc, _ = _run_child("merge" if convention == "add" else "merge-replace", paths, out, {}, None)
        if proc.returncode != 0:
            raise SystemExit(f"modelrig's {convention} merge (the anchors' reference) failed:\n{proc.stderr[-3000:]}")
        refs[convention] = out
    return refs


def run(work: Path, shape: Shape, *, rounds: int, only: set[str], anchors: dict | None = None) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with_anchors = bool(anchors) and "merge" in only
    paths = generate(work / "synthetic", shape, only=only - {"wide"}, bin_copies=with_anchors) \
        if only - {"wide"} else {}
    gen_s = time.perf_counter() - t0
    st, bins, pth = ("*.safetensors",), ("*.bin",), ("*.pth", "tokenizer.model")
    groups: dict[str, tuple[list[Path], list[str]]] = {}
    #: anchor task -> (script, the inputs it reads, the modelrig convention its output is compared with)
    anchor_tasks: dict[str, tuple[str, list[Path], str]] = {}
    if "merge" in only:
        inputs = _files(paths["base"], st) + _files(paths["delta"], st)
        if with_anchors:
            bin_inputs = _files(paths["base-bin"], bins) + _files(paths["delta-bin"], bins)
            for key, script in anchors["scripts"].items():
                anchor_tasks[f"anchor-{key}"] = (script, inputs, "replace" if key == "fengshenbang" else "add")
                if key == "fastchat":
                    anchor_tasks["anchor-fastchat-lowmem"] = (script, bin_inputs, "add")
        groups["merge"] = (inputs, ["merge", "merge-known", "merge-naive", *anchor_tasks])
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
    refs = _references(paths, work, {c for _, _, c in anchor_tasks.values()}) if anchor_tasks else {}
    failed: dict[str, str] = {}
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
                if task in failed:
                    continue
                if task in anchor_tasks:
                    script, task_inputs, convention = anchor_tasks[task]
                    row = measure(task, paths, work, task_inputs, {"script": script}, python=anchors["python"],
                                  compare=refs.get(convention) if r == 0 else None)
                    if "error" in row:
                        failed[task] = row["error"]
                        continue
                    rows.setdefault(task, []).append(row)
                    continue
                extra = {"cache": caches[op]} if task.endswith("-known") else {}
                rows.setdefault(task, []).append(measure(task, paths, work, inputs, extra))
            out_bytes = int(statistics.median(x["output_bytes"] for x in rows[tasks[0]]))
            rows.setdefault(f"floor-{op}", []).append(measure(
                f"floor-{op}", paths, work, inputs, {"inputs": [str(p) for p in inputs], "out_bytes": out_bytes}))
        if r == 0 and refs:
            for ref in refs.values():
                shutil.rmtree(ref, ignore_errors=True)
            refs = {}
    results = {task: _median(r) for task, r in rows.items() if task not in failed}
    results.update({task: {"task": task, "error": error} for task, error in failed.items()})
    if with_anchors and "fastchat" in anchors["scripts"]:
        # FastChat's --low-cpu-mem mode on the safetensors folders the other approaches read: does it run at all?
        tried = measure("anchor-fastchat-lowmem-st", paths, work, groups["merge"][0],
                        {"script": anchors["scripts"]["fastchat"]}, python=anchors["python"])
        anchors = {**anchors, "lowmem_on_safetensors": tried.get("error", "ran")}
    wide = None
    if "wide" in only:
        wide_paths = generate(work / "wide", WIDE_13B, only={"wide"})
        inputs = _files(wide_paths["meta"], pth) + _files(wide_paths["ziya"], bins)
        wide = _median([measure("wide", wide_paths, work, inputs) for _ in range(rounds)])
        wide["largest_tensor_bytes"] = WIDE_13B.largest_tensor_bytes
        shutil.rmtree(work / "wide", ignore_errors=True)
    model_bytes = 0
    for folder, patterns in ((paths.get("meta"), ("*.pth",)), (paths.get("base"), st)):
        if folder and folder.exists():
            model_bytes = sum(p.stat().st_size for p in _files(folder, patterns))
            break
    return {"results": results, "wide": wide, "largest_tensor_bytes": shape.largest_tensor_bytes,
            "model_bytes": model_bytes, "layers": shape.layers, "rounds": rounds, "generate_s": round(gen_s, 1),
            "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "anchors": ({k: v for k, v in anchors.items() if k != "scripts"} if with_anchors else None),
            "measured": sorted(only)}


#: Real sizes for the projections (GB, 1e9 bytes): Meta LLaMA-13B shards, the Ziya delta (28 .bin shards), the
#: merged output; Ziya-BLIP2's visual part is one 4.38 GB fp32 pickle and is used as fetched.
ZIYA_META_GB, ZIYA_DELTA_GB, ZIYA_FINAL_GB, BLIP2_VISUAL_GB = 26.0, 26.2, 26.0, 4.38
LABELS = {
    "merge": ("delta merge (`add`)", {
        "merge": "modelrig streaming (first run: hashes its inputs)",
        "merge-known": "modelrig streaming, input digests known (after `fetch`)",
        "merge-naive": "transformers: load base + delta, add, `save_pretrained`",
        "anchor-fastchat": "FastChat `apply_delta.py`: loads base + delta whole, `+=`, `save_pretrained`",
        "anchor-fastchat-lowmem": "FastChat `apply_delta.py --low-cpu-mem` (`.bin` copies: re-saves both shard by "
                                  "shard in pieces of at most 4 GiB in TMPDIR, adds piece by piece)",
        "anchor-fengshenbang": "Fengshenbang-LM `apply_delta.py`: loads both whole, keeps the delta's "
                               "embed_tokens/lm_head, `+=` the rest, `save_pretrained`"}),
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
        "bytes the process wrote (wchar); peak disk = the most the filesystem's free space fell below its level "
        "at the start, sampled every 5 ms while the process ran (temporaries included). The I/O floor reads the same "
        "inputs once and writes the output's size once with one fsync, no hashing or computing. Reproduce: "
        + ("`.venv/bin/python benchmarks/convert/anchors.py --fastchat-git FASTCHAT_CLONE --fengshenbang-git "
           "FENGSHENBANG_CLONE --dir DIR` (once), then `.venv/bin/python benchmarks/convert/run.py --anchors-dir DIR`."
           if data.get("anchors") else "`.venv/bin/python benchmarks/convert/run.py`."),
        "",
        "| operation | approach | wall (s), median | peak RSS (MiB) | read (GB) | written (GB) | peak disk (GB) |"
        " wall / I/O floor | same round: wall / floor, median | RSS / largest tensor | walls (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for op, (name, approaches) in LABELS.items():
        if f"floor-{op}" not in res:
            continue
        floor = res[f"floor-{op}"]["wall_s"]
        for task, label in [*approaches.items(), (f"floor-{op}", "I/O floor")]:
            if task not in res:
                continue
            r = res[task]
            if "error" in r:
                lines.append(f"| {name} | {label} | did not run: `{r['error']}` | - | - | - | - | - | - | - | - |")
                continue
            if "same" in r:
                label += f"; output {_same_short(r['same'], 'replace' if task == 'anchor-fengshenbang' else 'add')}"
            lines.append(f"| {name} | {label} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['read_bytes'] / 1e9:.2f} | {r['written_bytes'] / 1e9:.2f} | "
                         + (f"{r['peak_disk_bytes'] / 1e9:.2f}" if "peak_disk_bytes" in r else "-")
                         + f" | {r['wall_s'] / floor:.2f}x | "
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
                      "process pays, the I/O floor's included (it is started and imports torch like the others, so "
                      "the floor is the best a Python tool can do: start, read every input once, write the output "
                      "once). The verdicts below also give each ratio net of that start."]
    if "merge" in data.get("measured", ["merge"]):
        lines += ["", _anchors_paragraph(data)]
    if "chain-known" in res:
        lines += ["", _projection(data) + (" " + _anchor_projection(data) if data.get("anchors") else "")]
    elif data.get("anchors") and "merge" in res:
        lines += ["", _anchor_projection(data)]
    lines += ["", _verdicts(data), "", _noise(data), ""]
    return "\n".join(lines)


def _same_short(same: dict, convention: str) -> str:
    if same["identical"] == same["tensors"] and not (same["missing"] or same["extra"] or same["mismatched"]):
        return f"bit-identical to modelrig's `{convention}`"
    if not (same["missing"] or same["extra"] or same["mismatched"]) and same["max_ulp"] <= 1:
        return f"within fp16 rounding of modelrig's `{convention}`"
    return f"differs from modelrig's `{convention}` (below)"


ANCHOR_NAMES = {"anchor-fastchat": "FastChat", "anchor-fastchat-lowmem": "FastChat `--low-cpu-mem`",
                "anchor-fengshenbang": "Fengshenbang"}


def _anchor_rows(res: dict) -> dict[str, dict]:
    return {task: res[task] for task in ANCHOR_NAMES if task in res}


def _anchors_paragraph(data: dict) -> str:
    """What the anchors are, whether their outputs equal modelrig's, and how their memory and time compare."""
    info, res = data.get("anchors"), data["results"]
    if not info:
        return ("The public anchors' rows (FastChat's and Fengshenbang-LM's `apply_delta.py`) were not run in this "
                "run: they run with `--anchors-dir DIR`, which `benchmarks/convert/anchors.py` prepares (the "
                "unmodified scripts and a throwaway venv).")
    v, scripts = info["versions"], info["anchors"]
    named = []
    if "fastchat" in scripts:
        a = scripts["fastchat"]
        named.append(f"FastChat's [`{a['path']}`]({a['url']}) at `{a['commit'][:8]}`")
    if "fengshenbang" in scripts:
        a = scripts["fengshenbang"]
        named.append(f"Fengshenbang-LM's [`{a['path']}`]({a['url']}) at `{a['commit'][:8]}` (Ziya's merge script, "
                     "a fork of FastChat's whose `apply_delta` keeps the delta's embed_tokens and "
                     "lm_head as they are and adds the rest: modelrig's `replace`)")
    text = [f"Anchors: {' and '.join(named)}, run unmodified (their git blob ids are checked) from a throwaway venv "
            f"made by `benchmarks/convert/anchors.py` (Python {v['python']}, torch {v['torch']}, transformers "
            f"{v['transformers']}), in the same rounds and on the same base and delta folders as modelrig (each "
            "with config and the sentencepiece tokenizer the scripts load), each run measured like the others."]
    same = []
    for task, row in _anchor_rows(res).items():
        if "same" in row:
            convention = "replace" if task == "anchor-fengshenbang" else "add"
            same.append(f"{ANCHOR_NAMES[task]} {same_summary(row['same'], convention)}")
        elif "error" in row:
            same.append(f"{ANCHOR_NAMES[task]} did not run (`{row['error']}`)")
    if same:
        text.append("Their outputs, compared tensor by tensor with modelrig's merge of the same inputs: "
                    + "; ".join(same) + ".")
    if "lowmem_on_safetensors" in info:
        tried = info["lowmem_on_safetensors"]
        text.append("`--low-cpu-mem` globs `pytorch_model-*.bin` only: on the safetensors folders the other rows "
                    + ("read it ran anyway" if tried == "ran" else f"read it stops with `{tried}`")
                    + ", so its row reads `.bin` copies of the same tensors.")
    text.append(_anchors_compared(data))
    return " ".join(text)


def _anchors_compared(data: dict) -> str:
    """The anchors' memory and time against modelrig's first-run merge and the floor (same-round medians)."""
    res = data["results"]
    ours, model_gb = res["merge"], data["model_bytes"] / 1e9
    ran = {t: r for t, r in _anchor_rows(res).items() if "walls" in r}
    if not ran:
        return ""
    mem = [f"{ANCHOR_NAMES[t]} {r['peak_rss_mib']:.0f} MiB ({r['peak_rss_mib'] * 2**20 / data['model_bytes']:.1f}x "
           "the model)" for t, r in ran.items()]
    known = res["merge-known"]
    speed = [f"{ANCHOR_NAMES[t]} {_ratio(r['walls'], ours['walls']):.2f}x modelrig's wall "
             f"({_ratio(r['walls'], known['walls']):.2f}x), {_paired(res, t, 'merge'):.2f}x the floor"
             for t, r in ran.items()]
    text = (f"Memory: the anchors' default modes load whole models, so their peak RSS grows with the model "
            f"({model_gb:.2f} GB "
            "here): " + ", ".join(mem) + f", against modelrig's {ours['peak_rss_mib']:.0f} MiB, which streams "
            "8 MiB chunks and stays flat whatever the model's size.")
    low = ran.get("anchor-fastchat-lowmem")
    if low:
        text += (" `--low-cpu-mem` re-saves every input shard in pieces of at most 4 GiB (here the 700 MB shards as "
                 "they are) and holds one base and one delta piece at a time, so its memory follows the shard size, "
                 f"not the model; it pays in disk: it wrote {low['written_bytes'] / 1e9:.2f} GB (the split copies of "
                 f"base and delta, then the output) for a {low['output_bytes'] / 1e9:.2f} GB result.")
    text += (" Time, same-round medians against modelrig's first run (which also hashes every input byte) and, in "
             "brackets, against modelrig with its input digests known (after `fetch`): " + "; ".join(speed) + ".")
    return text


def _ratio(walls: list[float], ours: list[float]) -> float:
    """The median over rounds of one approach's wall divided by another's in the same round."""
    return statistics.median(a / b for a, b in zip(walls, ours, strict=True))


def _anchor_projection(data: dict) -> str:
    """The anchors' measured throughput beside modelrig's, for the real Ziya-LLaMA-13B merge step."""
    res = data["results"]
    moved_real = (ZIYA_META_GB + ZIYA_DELTA_GB + ZIYA_FINAL_GB) * 1e9
    base_mib = res["floor-merge"]["peak_rss_mib"]
    parts = []
    for task, label in (("merge", "modelrig's streaming merge (first run)"),
                        ("merge-known", "modelrig's, digests known"),
                        *((t, ANCHOR_NAMES[t]) for t in _anchor_rows(res) if "walls" in res[t])):
        if task not in res:
            continue
        r = res[task]
        rate = (r["read_bytes"] + r["output_bytes"]) / r["wall_s"]
        # Whole-model loaders: the peak above the bare interpreter with torch (the floor row) scales with the model.
        above = (r["peak_rss_mib"] - base_mib) * 2**20 / data["model_bytes"] * ZIYA_FINAL_GB * 1e9
        mem = (f"{r['peak_rss_mib']:.0f} MiB RAM" if task.startswith("merge") else
               "RAM bounded by its 4 GiB splits (its help: under 10 GB), plus 52 GB of split copies on disk"
               if task.endswith("-lowmem") else
               f"about {(above + base_mib * 2**20) / 1e9:.0f} GB RAM (its peak above the interpreter's, "
               f"{(r['peak_rss_mib'] - base_mib) * 2**20 / data['model_bytes']:.1f}x the model here, scaled to 26 GB)")
        parts.append(f"{label} {rate / 1e9:.2f} GB/s, about {moved_real / rate / 60:.0f} min, {mem}")
    return ("The merge step alone at real size (Ziya-LLaMA-13B: the 26 GB HF base and the "
            f"{ZIYA_DELTA_GB:g} GB delta read, {ZIYA_FINAL_GB:g} GB written), at the delta-merge throughputs "
            "measured above (bytes read + written per second): " + "; ".join(parts) + ". The anchors start from "
            "an HF base on disk (Meta's checkpoint converted by a whole-model script first), which the fused "
            "chain never writes.")


def _noise(data: dict) -> str:
    res = data["results"]
    floors = {op: res[f"floor-{op}"]["walls"] for op in LABELS if f"floor-{op}" in res}
    spread = max(max(w) / min(w) for w in floors.values())
    imp = res.get("import-torch", {}).get("wall_s", 0.0)
    return (f"Reading these numbers: the same I/O floor took up to {spread:.1f}x longer in one round than in another "
            "(other engineers' builds and tests share the two cores and the disk), so single ratios move by more "
            "than the 1.3x target between rounds; the same-round ratios are the fairer comparison. What separates "
            "modelrig from the floor is necessary work the floor skips: sha256 of every byte written (the stamp's "
            "output digests) and, on a first run, of every byte read (the idempotency key; after `fetch` those "
            "digests come from its stamp). Tensors stored verbatim in an input (every tensor of a `.bin`, Meta's "
            "replicated and column-parallel ones, a `replace` delta's copied rows) are copied file to file by the "
            "kernel (`copy_file_range`), which the floor's read-then-write does not; that is how a conversion can "
            f"beat it. Both start Python and import torch ({imp:.1f} s median here).")


def _paired(res: dict, task: str, op: str) -> float:
    """The median over rounds of this approach's wall divided by the floor's wall in the same round (robust to
    load that changes between rounds)."""
    floor = res[f"floor-{op}"]["walls"]
    return statistics.median(w / f for w, f in zip(res[task]["walls"], floor, strict=True))


def _paired_net(res: dict, task: str, op: str) -> float | None:
    """As `_paired`, with the same round's start of Python and torch taken off both walls (None when that start
    was not measured)."""
    if "import-torch" not in res:
        return None
    rounds = zip(res[task]["walls"], res[f"floor-{op}"]["walls"], res["import-torch"]["walls"], strict=True)
    return statistics.median((w - i) / max(f - i, 1e-3) for w, f, i in rounds)


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
        if op == "chain" and "peak_disk_bytes" in ours:
            vs += (f", peak disk {ours['peak_disk_bytes'] / 1e9:.2f} GB for a {ours['output_bytes'] / 1e9:.2f} GB "
                   "output")
        net = _paired_net(res, task, op)
        parts.append(f"{task}: {_paired(res, task, op):.2f}x the floor (same-round median"
                     + (f"; {net:.2f}x net of starting Python with torch" if net else "") + f"){vs}, "
                     f"{ours['peak_rss_mib'] / (data['largest_tensor_bytes'] / 2**20):.1f}x the largest tensor")
    return "Against the targets (wall <= 1.3x the I/O floor, faster than the naive approach, peak RSS <= 3x the " \
           "largest tensor), same-round medians: " + "; ".join(parts) + "."


def resolve_anchors(anchors_dir: Path | None, python: str | None, scripts: dict[str, Path | None]) -> dict | None:
    """The anchors to run: `anchors_dir` (made by anchors.py) and/or explicit paths (which win). Every script is
    checked unmodified (git blob id) and the interpreter asked for its versions; None when nothing is given."""
    sys.path.insert(0, str(REPO))
    from benchmarks.convert.anchors import ANCHORS, check_unmodified

    record: dict = {}
    if anchors_dir is not None:
        index = anchors_dir / "anchors.json"
        if not index.is_file():
            raise SystemExit(f"run.py: --anchors-dir {anchors_dir}: no anchors.json there "
                             "(make it with benchmarks/convert/anchors.py)")
        record = json.loads(index.read_text(encoding="utf-8"))
    chosen = {k: str(v["file"]) for k, v in record.get("anchors", {}).items()}
    chosen.update({k: str(v) for k, v in scripts.items() if v is not None})
    python = python or record.get("python")
    if not chosen:
        return None
    if not python or not Path(python).exists():
        raise SystemExit(f"run.py: --anchor-python: no interpreter for the anchors ({python or 'none given'}; "
                         "benchmarks/convert/anchors.py makes one)")
    for key, file in chosen.items():
        check_unmodified(ANCHORS[key], Path(file))
    probe = subprocess.run([python, "-c", "import json, platform, torch, transformers; print(json.dumps({"
                            "'python': platform.python_version(), 'torch': torch.__version__, "
                            "'transformers': transformers.__version__}))"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit(f"run.py: --anchor-python {python} cannot import torch and transformers: "
                         f"{_last_error(probe.stderr)}")
    return {"python": python, "scripts": chosen, "versions": json.loads(probe.stdout),
            "anchors": {k: {"title": ANCHORS[k].title, "repo": ANCHORS[k].repo, "commit": ANCHORS[k].commit,
                            "path": ANCHORS[k].path, "url": ANCHORS[k].url} for k in chosen}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="merge,meta,safetensors,chain,wide",
                        help="comma-separated operations: merge, meta, safetensors, chain, wide")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "modelrig-bench-convert")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--anchors-dir", type=Path, help="the public anchors of the delta merge, as "
                        "benchmarks/convert/anchors.py prepares them (scripts, venv, anchors.json)")
    parser.add_argument("--anchor-python", help="the interpreter that runs the anchors (default: the anchors dir's)")
    parser.add_argument("--anchor-fastchat", type=Path, help="FastChat's fastchat/model/apply_delta.py, unmodified")
    parser.add_argument("--anchor-fengshenbang", type=Path, help="Fengshenbang-LM's fengshen/utils/apply_delta.py, "
                        "unmodified")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="write the section again from the data "
                        "of an earlier run (WORKDIR/last.json), measuring nothing")
    args = parser.parse_args()
    if args.from_json:
        _write(markdown(json.loads(args.from_json.read_text(encoding="utf-8"))), write=not args.no_write)
        return
    if args.child:
        child(args.child, {k: Path(v) for k, v in json.loads(args.paths).items()}, args.out, json.loads(args.extra))
        return
    anchors = resolve_anchors(args.anchors_dir, args.anchor_python, {"fastchat": args.anchor_fastchat,
                                                                      "fengshenbang": args.anchor_fengshenbang})
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    shape = Shape(SYNTHETIC.hidden, SYNTHETIC.ffn, SYNTHETIC.vocab, SYNTHETIC.heads, args.layers)
    try:
        data = run(work, shape, rounds=args.rounds, only=set(args.only.split(",")), anchors=anchors)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.workdir / "last.json").write_text(json.dumps(data, indent=2))
    _write(markdown(data), write=not args.no_write)


def _write(text: str, *, write: bool) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.report import publish

    publish(SECTION, text, write=write)


if __name__ == "__main__":
    main()
