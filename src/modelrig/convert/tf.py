"""TensorFlow weights to PyTorch safetensors: TF1 checkpoints through a TF conversion env (`tf_model.h5`: tf_h5)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch

from modelrig.config import Context, HostConfig
from modelrig.convert.step import run_step
from modelrig.convert.tf1_types import model_class_for, read_config, resolve_type
from modelrig.envs.tools import clean_environ
from modelrig.errors import ConversionError, UsageError
from modelrig.plan import EnvPlan, TorchBuild
from modelrig.result import StageResult

#: Checkpoint variables that are optimizer state, never model weights (skipped before they are read).
OPTIMIZER_PARTS = ("adam_v", "adam_m", "AdamWeightDecayOptimizer", "AdamWeightDecayOptimizer_1", "global_step",
                   "Adam", "Adam_1")
#: Environment variable naming the python of a conversion env with tensorflow-cpu and transformers<5.
TF_PYTHON_ENV = "MODELRIG_TF_PYTHON"
#: The last transformers release with the `load_tf_weights_in_<type>` loaders (transfo_xl's under models/deprecated);
#: 5.0 dropped them all.
LAST_LOADER_RELEASE = "4.57.6"
#: Exit status of the conversion script when the checkpoint does not fit the model its config describes.
_MISMATCH_EXIT = 4
#: Exit status of the conversion script when its transformers no longer has the type's loader.
MISSING_EXIT = 3

_TF1_SCRIPT = textwrap.dedent(
    """
    import importlib, json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    spec = json.loads(sys.argv[1])
    skip = set(spec["skip"])
    skipped, names = [], []
    if spec["input"] == "tf_checkpoint":
        import tensorflow as tf
        listed = tf.train.list_variables

        def weights_only(path):
            keep = []
            for name, shape in listed(path):
                (skipped if set(name.split("/")) & skip else keep).append((name, shape))
            names[:] = [n for n, _ in keep]
            return keep

        tf.train.list_variables = weights_only  # optimizer slots are never read
    import torch
    import transformers
    try:
        module = importlib.import_module(spec["loader_module"])
        loader = getattr(module, spec["loader"])
        cls = getattr(module, spec["model_class"], None) or getattr(transformers, spec["model_class"])
    except (ImportError, AttributeError) as exc:
        print(json.dumps({"missing": str(exc), "transformers": transformers.__version__}))
        sys.exit(3)
    config = cls.config_class.from_json_file(spec["config"]) if spec["config"] else cls.config_class()
    for key, value in spec["config_set"].items():
        setattr(config, key, value)
    config.architectures = [spec["model_class"]]
    torch.manual_seed(0)
    model = cls(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    before = {n: p.data_ptr() for n, p in params.items()}

    def variable_of(tb):
        # The innermost loader frame's variable name: loaders keep it in one of these locals.
        found = None
        while tb is not None:
            local = tb.tb_frame.f_locals
            for key in ("original_name", "txt_name", "name"):
                value = local.get(key)
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    value = "/".join(value)
                if isinstance(value, str):
                    found = value
                    break
            tb = tb.tb_next
        if found and names and found not in names:
            found = next((n for n in names if n.endswith("/" + found) or n == found + ":0"), found)
        return found

    try:
        result = loader(model, config, spec["checkpoint"])
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        print(json.dumps({"mismatch": variable_of(exc.__traceback__), "detail": detail.splitlines()[0]}))
        sys.exit(4)
    missed = [n for n, p in params.items() if p.data_ptr() == before[n]]
    if missed:
        print(json.dumps({"unloaded": missed[0], "count": len(missed)}))
        sys.exit(4)
    model.eval()
    for p in model.parameters():  # loaders leave transposed views, which save_pretrained cannot write
        p.data = p.data.contiguous()
    # Every name is written, a tied alias as a copy: transformers 4.x re-initialises a module whose tied key is
    # missing from the file after loading it (ALBERT's save_pretrained output reloads with a zero MLM bias), and
    # which alias a version re-ties from differs. `tied` reports the aliases (alias -> the name it shares data with).
    state = model.state_dict()
    declared = set(getattr(model, "_tied_weights_keys", None) or [])
    groups = {}
    for name in sorted(state):
        groups.setdefault(state[name].data_ptr(), []).append(name)
    tied = {}
    for group in groups.values():
        kept = next((n for n in group if n not in declared), group[0])
        tied.update({n: kept for n in group if n != kept})
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()},
              os.path.join(spec["out"], "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(spec["out"])
    print(json.dumps({"loaded": len(names) or len(params), "skipped": [n for n, _ in skipped],
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


#: Tokenizer files of the original releases, copied next to the converted weights when they sit beside the input.
VOCAB_FILES = ("vocab.txt", "spiece.model", "30k-clean.model", "sentencepiece.model", "encoder.json", "vocab.bpe",
               "vocab.json", "merges.txt", "encoder_bpe_40000.json", "vocab_40000.bpe")


def npy_folder(checkpoint: Path) -> Path:
    """OpenAI GPT's release folder (`params_shapes.json`, `parameters_names.json`, `params_0..9.npy`)."""
    folder = Path(checkpoint)
    folder = folder.parent if folder.is_file() or ".ckpt" in folder.name else folder
    for name in ("params_shapes.json", "parameters_names.json", *(f"params_{n}.npy" for n in range(10))):
        if not (folder / name).is_file():
            raise ConversionError(f"{folder / name}: not found (OpenAI GPT's release folder has params_shapes.json, "
                                  "parameters_names.json and params_0.npy .. params_9.npy)")
    return folder


#: Config files of a release folder that do not describe the model.
NOT_MODEL_CONFIGS = ("tokenizer_config.json", "generation_config.json", "preprocessor_config.json",
                     "processor_config.json", "adapter_config.json", "special_tokens_map.json")


def tf1_config(folder: Path, name: str | None) -> Path | None:
    """A release folder's config: `name` when given, else its one `config.json`, `*_config.json` or `hparams.json`
    (None when it has none: OpenAI GPT and XLM need none)."""
    if name:
        return Path(folder) / name
    found = sorted(p for p in {*Path(folder).glob("*config.json"), *Path(folder).glob("hparams.json")}
                   if p.name not in NOT_MODEL_CONFIGS)
    if len(found) > 1:
        raise ConversionError(f"{folder}: several configs ({', '.join(p.name for p in found)}); name one with config:")
    return found[0] if found else None


def convert_tf1(*, checkpoint: Path, config: Path | None, out: Path, model_type: str | None = None,
                finetuning_task: str | None = None, python: Path | str | None = None, vocab: Path | None = None,
                cache: Path | None = None, model: str | None = None, ctx: Context | None = None) -> StageResult:
    """Convert an original TensorFlow release with transformers' `load_tf_weights_in_<type>`, run in the TF env.

    The inputs are those `transformers-cli convert` took: the checkpoint (a TF1 prefix; OpenAI GPT's folder;
    XLM's pickle), the config, and XLNet's fine-tuning task. The type comes from `model_type`, else the config.
    Optimizer slots (`adam_m`, `adam_v`, `global_step`) are filtered out of the variable list, so they are
    never read. A variable that does not fit the model, or a model weight no variable fills, is refused naming
    the first one. Output: `model.safetensors` (tied weights saved once), `config.json` and the vocabulary.
    """
    config = Path(config) if config else None
    if config is not None and not config.is_file():
        raise ConversionError(f"{config}: config file not found")
    kind = resolve_type(model_type, read_config(config) if config else None, config_path=config)
    if kind.input == "torch_pickle":
        from modelrig.convert.xlm import convert_xlm

        return convert_xlm(checkpoint=Path(checkpoint), out=out, cache=cache, model=model)
    model_class, config_set = model_class_for(kind, task=finetuning_task)
    if config is None and kind.name not in ("gpt", "gpt2"):
        raise UsageError(f"convert tf: --config is required for a {kind.name} checkpoint")
    if kind.input == "npy_folder":
        location = npy_folder(checkpoint)
        files = sorted(p for p in location.iterdir() if p.name.startswith("param") and p.is_file())
        folder = location
    else:
        location = tf1_prefix(checkpoint)
        files = [location.with_name(location.name + ".index"),
                 *sorted(location.parent.glob(location.name + ".data-*"))]
        folder = location.parent
    vocabs = [Path(vocab)] if vocab else [folder / name for name in VOCAB_FILES if (folder / name).is_file()]
    params = {"model_type": kind.name, "format": "tf1", "model_class": model_class}
    sources: dict[str, Path] = {f"ckpt:{f.name}": f for f in files}
    if config:
        sources["config"] = config
    sources.update({f"vocab:{v.name}": v for v in vocabs})

    def needed() -> int:
        return sum(f.stat().st_size for f in files) // 3 + (1 << 20)

    def body(tmp: Path) -> dict[str, Any]:
        interpreter = tf_python(python, ctx=ctx)
        spec = {"checkpoint": str(location), "config": str(config or ""), "out": str(tmp), "input": kind.input,
                "model_class": model_class, "loader": kind.loader, "loader_module": kind.loader_module,
                "config_set": config_set, "skip": list(OPTIMIZER_PARTS)}
        # A clean environment: no toolkit packages leak into the conversion env.
        proc = subprocess.run([str(interpreter), "-c", _TF1_SCRIPT, json.dumps(spec)], capture_output=True,
                              text=True, check=False, env=clean_environ())
        lines = proc.stdout.strip().splitlines()
        report = last_json(lines)
        if proc.returncode == MISSING_EXIT and report:
            raise ConversionError(f"{location}: {kind.name}: the conversion env's transformers "
                                  f"{report['transformers']} no longer has {kind.loader} ({report['missing']}); "
                                  f"the last release that converts {kind.name} is transformers "
                                  f"{LAST_LOADER_RELEASE}")
        if proc.returncode == _MISMATCH_EXIT and report:
            against = f"the {model_class} that {config} describes" if config else f"a default {model_class}"
            if "unloaded" in report:
                raise ConversionError(f"{location}: no variable fills {report['unloaded']} ({report['count']} model "
                                      f"weights unfilled): the checkpoint does not match {against}",
                                      code="checkpoint_mismatch", weight=report["unloaded"])
            raise ConversionError(f"{location}: variable {report['mismatch']} does not fit {against}: "
                                  f"{report['detail']}", code="checkpoint_mismatch", variable=report["mismatch"])
        if proc.returncode != 0 or not report:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise ConversionError(f"{location}: {kind.name} conversion failed in {interpreter}: {tail[0]}")
        normalise_config(tmp / "config.json")
        if (tmp / "generation_config.json").is_file():
            normalise_config(tmp / "generation_config.json")
        for v in vocabs:
            shutil.copyfile(v, tmp / v.name)
        return {"model_type": kind.name, "model_class": model_class, "loaded": report["loaded"],
                "skipped": len(report["skipped"]), "tied": report["tied"],
                "summary": f"tf ({kind.name}, {model_class}): {report['loaded']} variables, "
                           f"{len(report['skipped'])} optimizer slots skipped -> {out}"}

    return run_step("tf", out=Path(out), params=params, sources=sources, needed_bytes=needed, body=body,
                    cache=cache, model=model)


def last_json(lines: list[str]) -> dict[str, Any] | None:
    """The conversion script's report: its last stdout line, when that is a JSON object."""
    try:
        value = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def normalise_config(path: Path) -> None:
    """Rewrite a config deterministically (sorted keys) without the writer's version stamp."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("transformers_version", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- tf_model.h5
