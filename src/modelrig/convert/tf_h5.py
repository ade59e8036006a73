"""TF2 `tf_model.h5` files to safetensors: read with h5py and named after the transformers model of their config,
or, for an architecture h5py cannot map, through `from_pretrained(..., from_tf=True)` in the TF conversion env."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelrig.config import Context
from modelrig.convert.shards import OutputTensor, whole, write_safetensors_shards
from modelrig.convert.step import run_step
from modelrig.convert.tf import MISSING_EXIT, last_json, normalise_config, tf_python
from modelrig.envs.tools import clean_environ
from modelrig.errors import ConversionError, UsageError
from modelrig.result import StageResult


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
    # Tied aliases are written too, as copies of their source (transformers 4.x re-initialises a module whose
    # tied key is missing from the file); transformers 5 names each alias's source, older ones only the alias.
    sources = dict(tied) if isinstance(tied, dict) else {}
    shared: dict[int, list[str]] = {}  # names of one Parameter object (a tie made in the model's constructor)
    for pname, param in pt_model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(pname)
    for names in shared.values():
        source = next((n for n in names if n in mapped), None)
        sources.update({n: source for n in names if source and n not in mapped and n not in sources})
    tied_names |= set(sources)
    by_name = {t.name: t for t in tensors}
    for alias in sorted(set(expected) & tied_names - mapped):
        source = by_name.get(sources.get(alias, ""))
        if source is not None and source.shape == expected[alias]:
            tensors.append(OutputTensor(alias, source.shape, source.dtype, source.produce))
            mapped.add(alias)
    missing = sorted(set(expected) - mapped - tied_names)
    if missing:
        raise ConversionError(f"{path}: no weights for {', '.join(missing[:5])} ({len(missing)} missing): not a "
                              f"complete {arch} checkpoint")
    return sorted(tensors, key=lambda t: t.name), sorted(set(expected) & tied_names - mapped)


_H5_SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys, tempfile
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import transformers
    h5, config_file, out = sys.argv[1:4]
    config = json.load(open(config_file))
    arch = ((config.get("architectures") or [""])[0]).removeprefix("TF")
    cls = getattr(transformers, arch, None)
    if cls is None or not hasattr(transformers, "TF" + arch):
        print(json.dumps({"missing": arch, "transformers": transformers.__version__}))
        sys.exit(3)
    with tempfile.TemporaryDirectory(dir=out) as src:  # from_pretrained wants the two files side by side
        os.symlink(os.path.abspath(h5), os.path.join(src, "tf_model.h5"))
        shutil.copyfile(config_file, os.path.join(src, "config.json"))
        model = cls.from_pretrained(src, from_tf=True)
    state = model.state_dict()  # every name, tied aliases as copies (see the TF1 script)
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    print(json.dumps({"arch": arch, "tensors": len(state), "tied": {}}))
    """
)


def convert_h5(*, h5: Path, out: Path, config: Path | None = None, max_shard_size: int | str = "5GB",
               cache: Path | None = None, model: str | None = None, python: Path | str | None = None,
               ctx: Context | None = None) -> StageResult:
    """Convert Hugging Face's `tf_model.h5` to safetensors.

    With h5py and transformers' name rules, no TensorFlow, where the toolkit's transformers has the PyTorch class
    and every weight maps by those rules; otherwise, for any architecture whose TF class the conversion env's
    transformers ships, as `from_pretrained(..., from_tf=True)` does there (TensorFlow's own reading and
    transformers' own name mapping).
    """
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
        try:
            state["tensors"], state["tied"] = plan_h5(h5, config)
        except (ConversionError, ValueError, KeyError) as exc:  # AutoConfig: a type this transformers lacks
            state["h5py_refused"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return h5.stat().st_size + (1 << 20)
        return sum(t.nbytes for t in state["tensors"])

    def body(tmp: Path) -> dict[str, Any]:
        if "h5py_refused" in state:
            files = _h5_in_tf_env(h5, config, tmp, python=python, ctx=ctx, why=state["h5py_refused"])
            tensors, tied, how = files.pop("__tensors__"), files.pop("__tied__"), "TF env"
        else:
            files = write_safetensors_shards(state["tensors"], tmp, max_shard_size=max_shard_size, desc="h5")
            tensors, tied, how = len(state["tensors"]), state["tied"], "h5py"
        cfg = json.loads(config.read_text(encoding="utf-8"))
        cfg["architectures"] = [a[2:] if a.startswith("TF") else a for a in cfg.get("architectures") or []]
        cfg.pop("transformers_version", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if (tmp / "generation_config.json").is_file():
            normalise_config(tmp / "generation_config.json")
        for extra in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (h5.parent / extra).is_file():
                shutil.copyfile(h5.parent / extra, tmp / extra)
        return {"files": files, "tensors": tensors, "tied": tied, "read_with": how,
                "summary": f"tf (h5, {how}): {tensors} tensors -> {out}"}

    return run_step("tf", out=Path(out), params=params, sources={"h5": h5, "config": config}, needed_bytes=needed,
                    body=body, cache=cache, model=model)



def _h5_in_tf_env(h5: Path, config: Path, tmp: Path, *, python: Path | str | None, ctx: Context | None,
                  why: str) -> dict[str, Any]:
    """`from_pretrained(tmp, from_tf=True)` in the TF conversion env, saved as one safetensors file; returns the
    written files' digests plus `__tensors__` (count) and `__tied__` (dropped alias -> kept name)."""
    try:
        interpreter = tf_python(python, ctx=ctx)
    except UsageError as exc:
        raise ConversionError(f"{why}; reading it with TensorFlow instead needs the TF conversion env: {exc}") from None
    proc = subprocess.run([str(interpreter), "-c", _H5_SCRIPT, str(h5), str(config), str(tmp)], capture_output=True,
                          text=True, check=False, env=clean_environ())
    report = last_json(proc.stdout.strip().splitlines())
    if proc.returncode == MISSING_EXIT and report:
        raise ConversionError(f"{h5}: {why}; and the conversion env's transformers {report['transformers']} has no "
                              f"TF{report['missing']} either")
    if proc.returncode != 0 or not report:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise ConversionError(f"{h5}: from_pretrained(from_tf=True) failed in {interpreter}: {tail[0]}")
    from modelrig.stamp import sha256_file

    return {"model.safetensors": sha256_file(tmp / "model.safetensors"), "__tensors__": report["tensors"],
            "__tied__": report["tied"]}
