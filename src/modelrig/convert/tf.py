"""TensorFlow weights to PyTorch safetensors: TF1 checkpoints (via a TF conversion env) and `tf_model.h5` (h5py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelrig.config import Context, HostConfig
from modelrig.convert.shards import OutputTensor, whole, write_safetensors_shards
from modelrig.convert.step import run_step
from modelrig.envs.tools import clean_environ
from modelrig.errors import ConversionError, UsageError
from modelrig.plan import EnvPlan, TorchBuild
from modelrig.result import StageResult

#: Model types TF1 checkpoints can be converted for: (transformers 4.x model class, loader function).
TF1_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "bert": ("BertForPreTraining", "load_tf_weights_in_bert"),
    "albert": ("AlbertForPreTraining", "load_tf_weights_in_albert"),
    "electra": ("ElectraForPreTraining", "load_tf_weights_in_electra"),
    "gpt2": ("GPT2LMHeadModel", "load_tf_weights_in_gpt2"),
    "t5": ("T5ForConditionalGeneration", "load_tf_weights_in_t5"),
}
#: Checkpoint variables that are optimizer state, never model weights (skipped before they are read).
OPTIMIZER_PARTS = ("adam_v", "adam_m", "AdamWeightDecayOptimizer", "AdamWeightDecayOptimizer_1", "global_step")
#: Environment variable naming the python of a conversion env with tensorflow-cpu and transformers<5.
TF_PYTHON_ENV = "MODELRIG_TF_PYTHON"

_TF1_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import transformers

    ckpt, config_file, model_type, out = sys.argv[1:5]
    model_cls, loader = json.loads(sys.argv[5])
    skip = set(json.loads(sys.argv[6]))
    listed = tf.train.list_variables
    skipped = []

    def weights_only(path):
        keep = []
        for name, shape in listed(path):
            (skipped if set(name.split("/")) & skip else keep).append((name, shape))
        return keep

    tf.train.list_variables = weights_only  # optimizer slots are never read
    cls = getattr(transformers, model_cls)
    config = cls.config_class.from_json_file(config_file)
    config.architectures = [model_cls]
    model = cls(config)
    getattr(transformers, loader)(model, config, ckpt)
    model.eval()
    from safetensors.torch import _remove_duplicate_names, save_file
    state = model.state_dict()
    tied = {}
    for kept, dropped in _remove_duplicate_names(state).items():
        for name in dropped:
            tied[name] = kept
            del state[name]
    # One metadata entry only: safetensors stores metadata in a hash map, so several would come out in a
    # different order each run; the tied aliases are reported instead (transformers re-ties them on load).
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    print(json.dumps({"loaded": len(weights_only(ckpt)), "skipped": [n for n, _ in skipped],
                      "tied": dict(sorted(tied.items()))}))
    """
)


#: The TF1 conversion env: the last transformers line with the `load_tf_weights_in_<model>` loaders, and TensorFlow.
TF_CONVERSION_PACKAGES = ["transformers==4.47.1", "tensorflow-cpu", "tf-keras", "h5py", "numpy<2", "protobuf"]


def tf_conversion_env(config: HostConfig) -> EnvPlan:
    """The env spec for TF1 conversions on this host: the toolkit's Python and torch version (a CPU build is
    enough), plus TensorFlow and transformers 4.47."""
    version = torch.__version__.split("+")[0]
    index = f"{config.pip.torch_index_base.rstrip('/')}/cpu" if config.pip.use_torch_index else None
    build = TorchBuild(version=version, variant="cpu", index_url=index, requirements=[f"torch=={version}"])
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return EnvPlan(python=python, torch=build, packages=list(TF_CONVERSION_PACKAGES), tokenizers=None, env_vars={})


def tf_python(explicit: Path | str | None, *, ctx: Context | None = None) -> Path:
    """The python of the TF conversion env: `--tf-python`, else `$MODELRIG_TF_PYTHON`, else the conversion env
    that `modelrig env` builds (once, shared by identical specs) under the data root when `ctx` is given."""
    chosen = explicit or os.environ.get(TF_PYTHON_ENV)
    if not chosen:
        if ctx is None:
            raise UsageError(f"TF1 checkpoints need a python with tensorflow-cpu and transformers<5: pass "
                             f"--tf-python PATH or set {TF_PYTHON_ENV}")
        from modelrig.envs.build import build_env

        result = build_env(tf_conversion_env(ctx.config), data=ctx.data, config=ctx.config, model="tf-conversion")
        chosen = result.details["python"]
    path = Path(chosen)
    if not path.is_file():
        raise UsageError(f"--tf-python {path}: no such interpreter")
    return path


def tf1_prefix(checkpoint: Path) -> Path:
    """The checkpoint prefix (`.../bert_model.ckpt`) from the prefix, its `.index` or a folder holding one."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        found = sorted(checkpoint.glob("*.index"))
        if len(found) != 1:
            raise ConversionError(f"{checkpoint}: expected exactly one *.index checkpoint, found {len(found)}")
        checkpoint = found[0]
    if checkpoint.suffix == ".index":
        checkpoint = checkpoint.with_suffix("")
    index = checkpoint.with_name(checkpoint.name + ".index")
    if not index.is_file():
        raise ConversionError(f"{index}: not found (give the checkpoint prefix, e.g. bert_model.ckpt)")
    data = sorted(checkpoint.parent.glob(checkpoint.name + ".data-*-of-*"))
    if not data:
        raise ConversionError(f"{checkpoint}: no .data-NNNNN-of-NNNNN file next to the index")
    total = int(data[0].name.rsplit("-of-", 1)[1])
    if len(data) != total:
        raise ConversionError(f"{checkpoint}: {len(data)} of {total} .data shards present")
    return checkpoint


def convert_tf1(*, checkpoint: Path, config: Path, model_type: str, out: Path,
                python: Path | str | None = None, vocab: Path | None = None, cache: Path | None = None,
                model: str | None = None, ctx: Context | None = None) -> StageResult:
    """Convert a TF1-style checkpoint with transformers' `load_tf_weights_in_<model>`, run in the TF env.

    Optimizer slots (`adam_m`, `adam_v`, `global_step`) are filtered out of the variable list, so they are
    never read. Output: `model.safetensors` (tied weights saved once), `config.json` and the vocabulary.
    """
    if model_type not in TF1_MODEL_TYPES:
        raise UsageError(f"--model-type {model_type}: TF1 conversion supports {', '.join(TF1_MODEL_TYPES)}")
    prefix = tf1_prefix(checkpoint)
    config = Path(config)
    if not config.is_file():
        raise ConversionError(f"{config}: config file not found")
    vocab = vocab or next((p for p in (prefix.parent / "vocab.txt",) if p.is_file()), None)
    params = {"model_type": model_type, "format": "tf1"}
    files = [prefix.with_name(prefix.name + ".index"), *sorted(prefix.parent.glob(prefix.name + ".data-*"))]
    sources: dict[str, Path] = {f"ckpt:{f.name}": f for f in files}
    sources["config"] = config
    if vocab:
        sources["vocab"] = vocab

    def needed() -> int:
        return sum(f.stat().st_size for f in files) // 3 + (1 << 20)

    def body(tmp: Path) -> dict[str, Any]:
        interpreter = tf_python(python, ctx=ctx)
        cmd = [str(interpreter), "-c", _TF1_SCRIPT, str(prefix), str(config), model_type, str(tmp),
               json.dumps(TF1_MODEL_TYPES[model_type]), json.dumps(OPTIMIZER_PARTS)]
        # A clean environment: no toolkit packages leak into the conversion env.
        env = clean_environ()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise ConversionError(f"{prefix}: TF1 conversion failed in {interpreter}: {tail[0]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        _normalise_config(tmp / "config.json")
        if vocab:
            shutil.copyfile(vocab, tmp / vocab.name)
        return {"loaded": report["loaded"], "skipped": len(report["skipped"]), "tied": report["tied"],
                "summary": f"tf ({model_type}, TF1): {report['loaded']} variables, {len(report['skipped'])} "
                           f"optimizer slots skipped -> {out}"}

    return run_step("tf", out=Path(out), params=params, sources=sources, needed_bytes=needed, body=body,
                    cache=cache, model=model)


def _normalise_config(path: Path) -> None:
    """Rewrite a config deterministically (sorted keys) without the writer's version stamp."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("transformers_version", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- tf_model.h5


def tf_weight_name_to_pt(tf_name: str) -> tuple[str, bool]:
    """Hugging Face's TF2 -> PyTorch weight-name rule; returns (name, whether a kernel needs transposing)."""
    name = tf_name.replace(":0", "")
    name = re.sub(r"/[^/]*___([^/]*)/", r"/\1/", name)
    name = name.replace("_._", "/")
    name = re.sub(r"//+", "/", name)
    parts = name.split("/")
    if len(parts) > 1:
        parts = parts[1:]
    transpose = parts[-1] in ("kernel", "pointwise_kernel", "depthwise_kernel") or "emb_projs" in parts \
        or "out_projs" in parts
    if parts[-1] in ("kernel", "embeddings", "gamma"):
        parts[-1] = "weight"
    elif parts[-1] == "beta":
        parts[-1] = "bias"
    elif parts[-1] in ("pointwise_kernel", "depthwise_kernel"):
        parts[-1] = parts[-1].replace("_kernel", ".weight")
    return ".".join(parts), transpose


def _tf_to_pt_array(array: np.ndarray, transpose: bool, pt_shape: tuple[int, ...]) -> np.ndarray:
    if transpose and array.ndim == 2:
        array = array.T
    elif transpose and array.ndim == 3:
        array = np.transpose(array, (2, 1, 0))
    elif transpose and array.ndim == 4:
        array = np.transpose(array, (3, 2, 0, 1))
    if tuple(array.shape) != tuple(pt_shape) and array.size == int(np.prod(pt_shape)):
        array = array.reshape(pt_shape)
    return np.ascontiguousarray(array)


def _h5_names(path: Path) -> list[tuple[str, str]]:
    """(group, weight name) of every weight in a Keras-2 `save_weights` HDF5 file, duplicates dropped."""
    import h5py

    def attr_list(obj: Any, key: str) -> list[str]:
        if key in obj.attrs:
            values = list(obj.attrs[key])
        else:
            values, i = [], 0
            while f"{key}{i}" in obj.attrs:
                values += list(obj.attrs[f"{key}{i}"])
                i += 1
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    with h5py.File(path, "r") as f:
        for layer in attr_list(f, "layer_names"):
            for weight in attr_list(f[layer], "weight_names"):
                if weight not in seen:
                    seen.add(weight)
                    out.append((layer, weight))
    return out


def plan_h5(path: Path, config_file: Path) -> tuple[list[OutputTensor], list[str]]:
    """The PyTorch tensors of a `tf_model.h5`, named and shaped after the transformers model of its config.

    Returns (tensors, tied names left to transformers). Every model tensor must come from the file or be tied.
    """
    import h5py
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(config_file))
    arch = (config.architectures or [None])[0]
    arch = arch[2:] if arch and arch.startswith("TF") else arch
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise ConversionError(f"{config_file}: architectures {config.architectures} is not a "
                              "transformers PyTorch class")
    with torch.device("meta"):
        pt_model = cls(config)
    expected = {k: tuple(v.shape) for k, v in pt_model.state_dict().items()}
    tied = getattr(pt_model, "_tied_weights_keys", None) or {}
    tied_names = set(tied)  # a dict (target -> source) in transformers 5, a list before
    prefix = pt_model.base_model_prefix
    strip = bool(prefix) and not any(k.startswith(prefix + ".") for k in expected)
    tensors: list[OutputTensor] = []
    mapped: set[str] = set()
    for layer, weight in _h5_names(path):
        name, transpose = tf_weight_name_to_pt(weight)
        if strip and name.startswith(prefix + "."):
            name = name[len(prefix) + 1:]
        if name not in expected:
            raise ConversionError(f"{path}: weight {weight} maps to {name}, which {arch} does not have")
        if name in mapped:
            continue
        with h5py.File(path, "r") as f:
            shape = tuple(f[layer][weight].shape)
            dtype = torch.from_numpy(np.zeros(0, dtype=f[layer][weight].dtype)).dtype
        pt_shape = expected[name]
        if int(np.prod(shape)) != int(np.prod(pt_shape)):
            raise ConversionError(f"{path}: weight {weight} has shape {list(shape)}, {name} needs {list(pt_shape)}")
        mapped.add(name)

        def load(layer: str = layer, weight: str = weight, transpose: bool = transpose,
                 pt_shape: tuple[int, ...] = pt_shape) -> torch.Tensor:
            with h5py.File(path, "r") as f:
                array = np.asarray(f[layer][weight])
            return torch.from_numpy(_tf_to_pt_array(array, transpose, pt_shape))

        tensors.append(OutputTensor(name, pt_shape, dtype, whole(load)))
    missing = sorted(set(expected) - mapped - tied_names)
    if missing:
        raise ConversionError(f"{path}: no weights for {', '.join(missing[:5])} ({len(missing)} missing): not a "
                              f"complete {arch} checkpoint")
    return sorted(tensors, key=lambda t: t.name), sorted(set(expected) & tied_names - mapped)


def convert_h5(*, h5: Path, out: Path, config: Path | None = None, max_shard_size: int | str = "5GB",
               cache: Path | None = None, model: str | None = None) -> StageResult:
    """Convert Hugging Face's `tf_model.h5` to safetensors with h5py and transformers' name rules, no TensorFlow."""
    h5 = Path(h5)
    if h5.is_dir():
        h5 = h5 / "tf_model.h5"
    if not h5.is_file():
        raise ConversionError(f"{h5}: not found")
    config = Path(config) if config else h5.parent / "config.json"
    if not config.is_file():
        raise ConversionError(f"{config}: config file not found (pass --config)")
    params = {"format": "h5", "max_shard_size": str(max_shard_size)}
    state: dict[str, Any] = {}

    def needed() -> int:
        state["tensors"], state["tied"] = plan_h5(h5, config)
        return sum(t.nbytes for t in state["tensors"])

    def body(tmp: Path) -> dict[str, Any]:
        files = write_safetensors_shards(state["tensors"], tmp, max_shard_size=max_shard_size, desc="h5")
        cfg = json.loads(config.read_text(encoding="utf-8"))
        cfg["architectures"] = [a[2:] if a.startswith("TF") else a for a in cfg.get("architectures") or []]
        cfg.pop("transformers_version", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for extra in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (h5.parent / extra).is_file():
                shutil.copyfile(h5.parent / extra, tmp / extra)
        return {"files": files, "tensors": len(state["tensors"]), "tied": state["tied"],
                "summary": f"tf (h5): {len(state['tensors'])} tensors -> {out}"}

    return run_step("tf", out=Path(out), params=params, sources={"h5": h5, "config": config}, needed_bytes=needed,
                    body=body, cache=cache, model=model)

