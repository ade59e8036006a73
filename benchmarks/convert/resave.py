"""Benchmark `.bin` -> safetensors against transformers' resave, and a BERT-base TF1 conversion against
transformers' own; writes its section of BENCHMARKS.md.

Part one (`resave`): the synthetic LLaMA-shaped fp16 `.bin` model of `run.py` (4 layers, about 2.1 GB in 700 MB
shards), converted by modelrig (first run, hashing its inputs; and with its input digests known, as after
`fetch`) and by what a user would otherwise run, transformers' `from_pretrained(...).save_pretrained(...)` (which
leaves its output in the page cache), alone and followed by `sync` (durable, as modelrig's fsynced output is).
Part two (`tf-bert`): a BERT-base-sized TF1 checkpoint (Google's variable names, no optimizer slots, 440 MB)
converted by `modelrig convert tf` and by `load_tf_weights_in_bert` + `save_pretrained` in the same TF conversion
env. Both parts: the I/O floor (read the inputs once, write the output's size once, one fsync), 3 interleaved
rounds in rotating order, warm page cache, medians and same-round ratios; peak RSS includes the conversion env's
process where modelrig starts one.

    .venv/bin/python benchmarks/convert/resave.py --tf-python PY [--rounds 3] [--only resave,tf-bert] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # the harness beside this file

SECTION = "## .bin -> safetensors against transformers' resave; TF1 BERT-base (benchmarks/convert/resave.py)"

_BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
              "initializer_range": 0.02}

_WRITE_BERT = textwrap.dedent(
    """
    import json, os, re, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import torch
    from torch import nn
    from transformers import BertConfig, BertForPreTraining

    out, cfg = sys.argv[1], json.loads(sys.argv[2])
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**cfg))
    mods = dict(model.named_modules())
    variables = {}
    for pname, p in model.named_parameters():
        mod_name, _, leaf = pname.rpartition(".")
        mod, path = mods[mod_name], re.sub(r"layer\\.(\\d+)", r"layer_\\1", mod_name).split(".")
        value = p.detach().numpy()
        if isinstance(mod, nn.LayerNorm):
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        elif isinstance(mod, nn.Embedding):
            leaf = None
        elif isinstance(mod, nn.Linear) and leaf == "weight":
            leaf, value = "kernel", value.T.copy()
        elif leaf == "bias":
            leaf = "output_bias"
        variables["/".join(path + ([leaf] if leaf else []))] = tf.Variable(value)
    saver = tf.compat.v1.train.Saver(var_list=variables, write_version=tf.compat.v1.train.SaverDef.V2)
    saver.save(None, os.path.join(out, "bert_model.ckpt"), write_meta_graph=False, write_state=False)
    json.dump(cfg, open(os.path.join(out, "bert_config.json"), "w"), indent=2)
    """
)

LABELS = {
    "resave": (".bin -> safetensors", {
        "safetensors": "modelrig (first run: hashes every input byte; fsyncs; sha256 of every output byte)",
        "safetensors-known": "modelrig, input digests known (after `fetch`)",
        "resave": "transformers `from_pretrained` + `save_pretrained` (output left in the page cache)",
        "resave-sync": "transformers `from_pretrained` + `save_pretrained`, then `sync`"}),
    "tf-bert": ("TF1 BERT-base -> PyTorch", {
        "tf-bert": "`modelrig convert tf` (conversion env process included)",
        "tf-bert-transformers": "`load_tf_weights_in_bert` + `save_pretrained` (same env)"}),
}


def _rounds(op: str, tasks: list[str], inputs: list[Path], paths: dict, work: Path, rounds: int,
            extras: dict[str, dict], pythons: dict[str, str]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in range(rounds):
        for task in tasks[r % len(tasks):] + tasks[:r % len(tasks)]:
            row = run.measure(task, paths, work, inputs, extras.get(task), python=pythons.get(task))
            if "error" in row:
                raise SystemExit(f"{task} failed: {row['error']}")
            rows.setdefault(task, []).append(row)
        out_bytes = int(statistics.median(x["output_bytes"] for x in rows[tasks[0]]))
        rows.setdefault(f"floor-{op}", []).append(run.measure(
            f"floor-{op}", paths, work, inputs, {"inputs": [str(p) for p in inputs], "out_bytes": out_bytes}))
    return rows


def measure_all(work: Path, *, rounds: int, only: set[str], tf_python: str | None) -> dict:
    load_before = os.getloadavg()[0]
    rows: dict[str, list[dict]] = {}
    sizes: dict[str, int] = {}
    if "resave" in only:
        paths = run.generate(work / "synthetic", run.SYNTHETIC, only={"safetensors"})
        inputs = run._files(paths["bin"], ("*.bin",))
        cache = run._cache_digests(work / "resave", inputs + run._files(paths["bin"], ("*.json",)))
        rows.update(_rounds("resave", ["safetensors", "safetensors-known", "resave", "resave-sync"], inputs, paths,
                            work, rounds, {"safetensors-known": {"cache": cache}}, {}))
        sizes["resave"] = sum(p.stat().st_size for p in inputs)
        shutil.rmtree(work / "synthetic", ignore_errors=True)
    if "tf-bert" in only:
        if not tf_python:
            raise SystemExit("resave.py: tf-bert needs --tf-python (the TF conversion env's python)")
        folder = work / "tf-bert"
        folder.mkdir(parents=True)
        subprocess.run([tf_python, "-c", _WRITE_BERT, str(folder), json.dumps(_BERT_BASE)], check=True,
                       capture_output=True)
        inputs = sorted(folder.glob("bert_model.ckpt.*"))
        rows.update(_rounds("tf-bert", ["tf-bert", "tf-bert-transformers"], inputs, {"tf-bert": folder}, work,
                            rounds, {"tf-bert": {"tf_python": tf_python}}, {"tf-bert-transformers": tf_python}))
        sizes["tf-bert"] = sum(p.stat().st_size for p in inputs)
    versions = subprocess.run([sys.executable, "-c", "import torch, transformers, safetensors; print("
                               "transformers.__version__, torch.__version__, safetensors.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    return {"results": {task: run._median(r) for task, r in rows.items()}, "sizes": sizes, "rounds": rounds,
            "load": [round(load_before, 1), round(os.getloadavg()[0], 1)], "versions": versions,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _tasks(op: str) -> set[str]:
    return {*LABELS[op][1], f"floor-{op}"}


def _same_round(res: dict, task: str, other: str) -> float:
    return statistics.median(a / b for a, b in zip(res[task]["walls"], res[other]["walls"], strict=True))


def markdown(data: dict) -> str:
    res = data["results"]
    tv, torch_v, st_v = data["versions"]
    lines = [SECTION, "",
             f"Measured {data['when']} on this machine ({os.cpu_count()} cores shared with other developers' work; "
             f"load average {data['load'][0]} at the start, {data['load'][1]} at the end), transformers {tv}, "
             f"torch {torch_v}, safetensors {st_v}; {data['rounds']} interleaved rounds in rotating order, warm page "
             "cache, each measurement its own process, medians; the last column lists every round's wall. "
             "Reproduce: `.venv/bin/python benchmarks/convert/resave.py --tf-python <TF conversion env python>`."
             + "".join(f" The {LABELS[op][0]} rows were measured {e['when']} (load average {e['load'][0]} at the "
                       f"start, {e['load'][1]} at the end)." for op, e in data.get("earlier", {}).items()),
             "",
             "| operation | approach | wall (s), median | peak RSS (MiB) | read (GB) | wall / I/O floor, same round |"
             " walls (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for op, (name, approaches) in LABELS.items():
        if f"floor-{op}" not in res:
            continue
        for task, label in [*approaches.items(), (f"floor-{op}", "I/O floor")]:
            r = res[task]
            lines.append(f"| {name} | {label} | {r['wall_s']:.2f} | {r['peak_rss_mib']:.0f} | "
                         f"{data['sizes'][op] / 1e9:.2f} | {_same_round(res, task, f'floor-{op}'):.2f}x | "
                         f"{', '.join(f'{w:.2f}' for w in r['walls'])} |")
    lines.append("")
    if "resave" in res:
        parts = []
        for task in ("safetensors", "safetensors-known"):
            parts.append(f"`{task}`: {_same_round(res, task, 'resave-sync'):.2f}x the resave + sync (target <= 1.0x), "
                         f"{_same_round(res, task, 'resave'):.2f}x the resave alone (target <= 1.3x)")
        lines.append("Same-round ratios (median over rounds of modelrig's wall / the anchor's wall in that round): "
                     + "; ".join(parts) + ". modelrig's output is durable (each shard fsynced, its writeback started "
                     "while it is written) and every output byte is hashed (the stamp's digests); the resave's is "
                     "neither until `sync`.")
    if "tf-bert" in res:
        ours, theirs = res["tf-bert"], res["tf-bert-transformers"]
        lines.append("")
        lines.append(f"TF1 BERT-base: modelrig {ours['wall_s']:.1f} s / {ours['peak_rss_mib']:.0f} MiB against "
                     f"transformers' own {theirs['wall_s']:.1f} s / {theirs['peak_rss_mib']:.0f} MiB "
                     f"({_same_round(res, 'tf-bert', 'tf-bert-transformers'):.2f}x its wall, same round). modelrig "
                     "runs the same `load_tf_weights_in_bert` in the same env (so both pay TensorFlow's import), and "
                     "adds what the bare call lacks: optimizer slots filtered before they are read, every model "
                     "weight checked as filled, every tied alias written as its own copy (transformers 4.x "
                     "re-initialises a module whose tied key a file lacks: hence the larger output and the extra "
                     "peak, the copies), fsync, and the step's digests and stamp.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="resave,tf-bert", help="comma-separated: resave, tf-bert")
    parser.add_argument("--tf-python", help="the TF conversion env's python (tensorflow-cpu, transformers 4.47)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "modelrig-bench-resave")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="write the section from an earlier run's data")
    args = parser.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
        try:
            data = measure_all(work, rounds=args.rounds, only=set(args.only.split(",")), tf_python=args.tf_python)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        last = args.workdir / "last.json"
        if last.is_file():  # a part not measured now keeps its rows from the previous run (and says when)
            before = json.loads(last.read_text(encoding="utf-8"))
            for op in LABELS:
                if op not in data["sizes"] and op in before.get("sizes", {}):
                    data["sizes"][op] = before["sizes"][op]
                    data["results"].update({k: v for k, v in before["results"].items() if k in _tasks(op)})
                    data.setdefault("earlier", {})[op] = {"when": before["when"], "load": before["load"]}
        last.write_text(json.dumps(data, indent=2))
    sys.path.insert(0, str(run.REPO))
    from benchmarks.report import publish

    publish(SECTION, markdown(data), write=not args.no_write)


if __name__ == "__main__":
    main()
