"""`modelrig convert MODEL` and the single steps: `convert llama-meta|delta|make-delta|tf|safetensors`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrig.cli import parse_pairs
from modelrig.config import Context
from modelrig.result import StageResult

#: The single-step verbs; any other first argument is a model id.
STEP_VERBS = ("llama-meta", "delta", "make-delta", "tf", "safetensors")


def register(sub: Any) -> None:
    """Add `convert`."""
    from modelrig.cli import add_json_flag

    p = sub.add_parser(
        "convert", help="convert a model's weights (its manifest's steps) or run one conversion step",
        description="`modelrig convert MODEL [--input NAME=DIR] [--local NAME=PATH]` runs a manifest's steps; "
                    f"`modelrig convert {{{','.join(STEP_VERBS)}}} ...` runs one step on weights on disk "
                    "(see `modelrig convert VERB --help`).")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="MODEL|VERB ...",
                   help="model id / manifest path and its options, or one of: " + ", ".join(STEP_VERBS))
    add_json_flag(p)
    p.set_defaults(func=_convert)


def _parser(verb: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelrig convert" if verb == "model" else f"modelrig convert {verb}")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON result")
    shard = {"default": "5GB", "metavar": "SIZE", "help": "largest output shard (default 5GB)"}
    if verb == "model":
        p.add_argument("model", help="model id or path to a manifest YAML file")
        p.add_argument("--input", action="append", default=[], metavar="NAME=DIR",
                       help="read a weight source or step output from DIR instead of the store (repeatable)")
        p.add_argument("--local", action="append", default=[], metavar="NAME=PATH",
                       help="path of user-supplied weights named by a manifest's local: var (repeatable)")
        p.add_argument("--tf-python", help="python of a conversion env with tensorflow-cpu and transformers<5")
        p.add_argument("--check", action="store_true",
                       help="only report which steps would run and why; convert and write nothing")
        p.add_argument("--keep-intermediates", action="store_true",
                       help="write every step's output to its own folder instead of fusing steps that feed each "
                            "other into one pass (as `keep: true` on every step)")
        p.add_argument("--prune-sources", action=argparse.BooleanOptionalAction, default=None,
                       help="once the conversion is done and stamped, delete the hub-fetched sources only it reads "
                            "(their fetch stamps keep every sha256; default: the host config's "
                            "convert.prune_sources)")
    elif verb == "llama-meta":
        p.add_argument("--input", required=True, type=Path, help="folder with params.json and consolidated.NN.pth")
        p.add_argument("--size", choices=("7B", "13B", "30B", "33B", "65B"),
                       help="expected LLaMA-1 size (checked against params.json and the shard count)")
        p.add_argument("--llama-version", choices=("1", "2"), default="1", help="sets the context length")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--max-shard-size", **shard)
    elif verb in ("delta", "make-delta"):
        p.add_argument("--base", required=True, type=Path, help="base model folder (HF layout)")
        if verb == "delta":
            p.add_argument("--delta", required=True, type=Path, help="delta folder (.bin or .safetensors)")
        else:
            p.add_argument("--target", required=True, type=Path, help="the model the delta should rebuild")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--convention", required=True, choices=("replace", "add", "zero-pad-add", "slice-add"),
                       help="replace: Ziya/Fengshenbang; add: FastChat; zero-pad-add: FastChat<=0.1.10 and "
                            "StableVicuna; slice-add: LLaVA")
        p.add_argument("--max-shard-size", **shard)
        p.add_argument("--allow-unsafe-pickle", action="store_true",
                       help="DANGEROUS: unpickle files that need arbitrary code (only for sources you trust)")
        if verb == "delta":
            p.add_argument("--no-check", action="store_true",
                           help="skip the full-weights-vs-difference check of the embedding")
    elif verb == "tf":
        p.add_argument("--checkpoint", required=True, type=Path,
                       help="TF1 checkpoint prefix/.index/folder, or a tf_model.h5 (or its folder)")
        p.add_argument("--config", type=Path, help="model config (default: the one config file beside the "
                       "checkpoint: bert_config.json, hparams.json, config.json, ...)")
        p.add_argument("--model-type", help="albert, bert, electra, funnel, gpt, gpt2, lxmert, rembert, t5, "
                       "transfo_xl, xlm, xlnet (default: from the config's model_type or the shape of its keys)")
        p.add_argument("--finetuning-task", help="XLNet only: the GLUE or SQuAD task the checkpoint was fine-tuned on")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--tf-python", help="python of a conversion env with tensorflow-cpu and transformers<5 "
                       "(default: $MODELRIG_TF_PYTHON); not needed for tf_model.h5")
        p.add_argument("--vocab", type=Path, help="vocabulary file to copy next to the weights")
    elif verb == "safetensors":
        p.add_argument("--input", required=True, type=Path, help="a .bin file or a model folder")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--max-shard-size", **shard)
        p.add_argument("--allow-unsafe-pickle", action="store_true",
                       help="DANGEROUS: unpickle files that need arbitrary code (only for sources you trust)")
    return p


def _run_model(args: argparse.Namespace, ctx: Context, model: str) -> StageResult:
    from modelrig.catalog import load_model
    from modelrig.convert.pipeline import check_pipeline, run_pipeline
    from modelrig.orchestrate.prune import prune_enabled, prune_sources

    manifest = load_model(model)
    inputs, local = parse_pairs(args.input, "--input"), parse_pairs(args.local, "--local")
    if args.check:
        result = check_pipeline(manifest, ctx, inputs=inputs, local=local, keep_intermediates=args.keep_intermediates)
    else:
        result = run_pipeline(manifest, ctx, inputs=inputs, local=local, tf_python=args.tf_python,
                              keep_intermediates=args.keep_intermediates)
    # Whether any step ran (or would): what a restart of the model's services depends on, unlike pruning alone.
    result.details["converted"] = result.changed
    if prune_enabled(args.prune_sources, ctx):
        report = prune_sources(manifest, ctx, inputs=inputs, local=local, keep_intermediates=args.keep_intermediates,
                               check=args.check)
        result.details["pruned"] = report.to_dict()
        if report.freed_bytes:
            result.changed = True
            if args.check:
                result.reasons.append(f"prune: {report.summary()}")
                result.summary += f"; {report.summary()}"
    return result


def _run_step(verb: str, args: argparse.Namespace, ctx: Context) -> StageResult:
    cache = ctx.data.cache / "digests.json"
    if verb == "llama-meta":
        from modelrig.convert.llama_meta import convert_llama_meta

        return convert_llama_meta(input_dir=args.input, out=args.out, size=args.size,
                                  llama_version=args.llama_version, max_shard_size=args.max_shard_size, cache=cache)
    if verb == "delta":
        from modelrig.convert.delta import apply_delta

        return apply_delta(base=args.base, delta=args.delta, out=args.out, convention=args.convention,
                           max_shard_size=args.max_shard_size, check=not args.no_check,
                           allow_unsafe_pickle=args.allow_unsafe_pickle, cache=cache)
    if verb == "make-delta":
        from modelrig.convert.delta import make_delta

        return make_delta(base=args.base, target=args.target, out=args.out, convention=args.convention,
                          max_shard_size=args.max_shard_size, allow_unsafe_pickle=args.allow_unsafe_pickle,
                          cache=cache)
    if verb == "tf":
        from modelrig.convert.tf import convert_tf1, tf1_config
        from modelrig.convert.tf_h5 import convert_h5

        ckpt: Path = args.checkpoint
        h5 = ckpt if ckpt.suffix == ".h5" else ckpt / "tf_model.h5" if ckpt.is_dir() else None
        if h5 is not None and h5.is_file():
            return convert_h5(h5=h5, config=args.config, out=args.out, cache=cache, python=args.tf_python, ctx=ctx)
        config = args.config
        if config is None and ckpt.suffix != ".pth":  # the release's own config, when its folder has exactly one
            config = tf1_config(ckpt if ckpt.is_dir() else ckpt.parent, None)
        return convert_tf1(checkpoint=ckpt, config=config, model_type=args.model_type,
                           finetuning_task=args.finetuning_task, out=args.out, python=args.tf_python,
                           vocab=args.vocab, cache=cache, ctx=ctx)
    from modelrig.convert.safetensors_convert import convert_to_safetensors

    return convert_to_safetensors(source=args.input, out=args.out, max_shard_size=args.max_shard_size,
                                  allow_unsafe_pickle=args.allow_unsafe_pickle, cache=cache)


def _convert(args: argparse.Namespace, ctx: Context) -> int:
    # `convert VERB ...` runs one step; anything else is `convert [options] [--] MODEL [options]`.
    verb = args.rest[0] if args.rest and args.rest[0] in STEP_VERBS else "model"
    sub_args = _parser(verb).parse_args(args.rest if verb == "model" else args.rest[1:])
    runner: Callable[[], StageResult] = (lambda: _run_model(sub_args, ctx, sub_args.model)) if verb == "model" \
        else (lambda: _run_step(verb, sub_args, ctx))
    result = runner()
    if ctx.as_json or sub_args.json:
        print(result.to_json())
    else:
        print(result.line())
        if "pruned" in result.details:
            from modelrig.orchestrate.prune import prune_line

            print(prune_line(result.details["pruned"]))
    return 0
