"""`modelrig convert MODEL`: run a manifest's conversion steps, each reading fetched weights or earlier outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.convert import record
from modelrig.convert.step import checking
from modelrig.errors import ConversionError, UsageError
from modelrig.fetch import locate
from modelrig.manifest import ApplyDelta, ConvertStep, LlamaMetaToHf, Manifest, TfToPt, ToSafetensors, WeightSource
from modelrig.plan.steps import group_steps, group_summary
from modelrig.result import StageResult, timed


def source_dir(name: str, source: WeightSource, ctx: Context, *, local: Mapping[str, str] | None = None) -> Path:
    """The folder of a weight source (`fetch.locate.source_dir`); a ConversionError when it is not on disk."""
    try:
        return locate.source_dir(name, source, ctx, local=local)
    except locate.NotOnDisk as exc:
        raise ConversionError(str(exc)) from None


def run_pipeline(manifest: Manifest, ctx: Context, *, inputs: Mapping[str, str] | None = None,
                 local: Mapping[str, str] | None = None, tf_python: str | None = None,
                 keep_intermediates: bool = False) -> StageResult:
    """Run every conversion step of `manifest` in order; each is skipped when its stamped output is current.

    Consecutive steps that feed each other run as one fused pass (`plan.steps.group_steps`) unless a step says
    `keep: true` or `keep_intermediates` is set, which writes every step's output as its own folder.
    `inputs` (NAME=DIR) overrides where a weight source or an earlier output is read from. A re-run with
    nothing changed is answered from the pipeline's record (`convert.record`), without loading the converters.
    """
    inputs = dict(inputs or {})
    known = set(manifest.weights) | {s.output_name for s in manifest.convert}
    for name in inputs:
        if name not in known:
            raise UsageError(f"--input {name}=...: {manifest.id} has no weight source or step output {name!r} "
                             f"(known: {', '.join(sorted(known))})")
    produced: dict[str, Path] = {}
    cache = ctx.data.cache / "digests.json"

    def where(name: str | None, fallback: str | None = None) -> Path:
        key = name or fallback
        if key is None:
            raise ConversionError(f"{manifest.id}: a step names no input")
        if key in inputs:
            return Path(inputs[key]).expanduser()
        if key in produced:
            return produced[key]
        if key in manifest.weights:
            return source_dir(key, manifest.weights[key], ctx, local=local)
        raise ConversionError(f"{manifest.id}: step input {key!r} is neither a weight source nor an earlier output")

    results: list[StageResult] = []
    done: list[str] = []
    previous: str | None = None
    groups = group_steps(manifest, keep_intermediates=keep_intermediates, overridden=frozenset(inputs))
    folders: dict[str, Path] | None = None
    if tf_python is None and manifest.convert:
        try:
            folders = {name: where(name) for name in record.external_inputs(manifest, inputs)}
        except (ConversionError, UsageError):
            folders = None  # the full pipeline says what is missing
    with timed() as clock:
        if folders is not None:
            shape = record.fingerprint(manifest, groups, folders, keep_intermediates=keep_intermediates,
                                       contents=False)
            earlier = record.read_record(ctx, manifest.id, shape)
            if earlier is not None:
                finger = record.fingerprint(manifest, groups, folders, keep_intermediates=keep_intermediates,
                                            cache=cache, persist=not checking())
                stamps = record.current_outputs(earlier, finger)
                if stamps is not None:
                    return _unchanged(manifest, ctx, groups, stamps, clock)
        from modelrig.convert.chain import run_chain
        from modelrig.convert.delta import apply_delta
        from modelrig.convert.llama_meta import convert_llama_meta
        from modelrig.convert.safetensors_convert import convert_to_safetensors
        from modelrig.convert.tf import convert_tf1, tf1_config
        from modelrig.convert.tf_h5 import convert_h5

        for group in groups:
            step = group[-1]
            out = ctx.data.output_dir(manifest.id, step.output_name)
            if len(group) > 1:
                result = run_chain(group, out=out, where=where, cache=cache, model=manifest.id)
            elif isinstance(step, LlamaMetaToHf):
                result = convert_llama_meta(input_dir=where(step.input), out=out, size=step.size, cache=cache,
                                            model=manifest.id)
            elif isinstance(step, ApplyDelta):
                result = apply_delta(base=where(step.base), delta=where(step.delta), out=out,
                                     convention=step.convention, cache=cache, model=manifest.id)
            elif isinstance(step, TfToPt):
                src = where(step.input)
                if (src / "tf_model.h5").is_file():
                    config = src / (step.config or "config.json")
                    result = convert_h5(h5=src / "tf_model.h5", config=config, out=out, cache=cache,
                                        model=manifest.id, python=tf_python, ctx=ctx)
                else:
                    result = convert_tf1(checkpoint=src / step.checkpoint if step.checkpoint else src,
                                         config=tf1_config(src, step.config), model_type=step.model_type,
                                         finetuning_task=step.finetuning_task, out=out, python=tf_python,
                                         cache=cache, model=manifest.id, ctx=ctx)
            elif isinstance(step, ToSafetensors):
                result = convert_to_safetensors(source=where(step.input, previous), out=out,
                                                max_shard_size=step.max_shard_size,
                                                allow_unsafe_pickle=step.allow_unsafe_pickle, cache=cache,
                                                model=manifest.id)
            else:  # pragma: no cover - the manifest schema admits only the kinds above
                raise ConversionError(f"{manifest.id}: unknown conversion step {step!r}")
            produced[step.output_name] = out
            previous = step.output_name
            results.append(result)
            done.append(group_summary(group, changed=result.changed))
        if folders is not None and not checking():
            finger = record.fingerprint(manifest, groups, folders, keep_intermediates=keep_intermediates,
                                        cache=cache)
            record.write_record(ctx, manifest.id, finger, list(produced.values()))
    changed = any(r.changed for r in results)
    summary = f"{len(manifest.convert)} step(s): " + ", ".join(done) if results else "no conversion steps"
    return StageResult(stage="convert", changed=changed, model=manifest.id, seconds=clock["seconds"],
                       summary=summary, details={"steps": [r.to_dict() for r in results],
                                                 "output": str(produced.get(manifest.output_name, ""))})


def _unchanged(manifest: Manifest, ctx: Context, groups: list[list[ConvertStep]], stamps: dict[str, Any],
               clock: dict[str, float]) -> StageResult:
    """The result of a run in which no step had anything to do, told from the outputs' stamps."""
    steps = []
    for group in groups:
        out = ctx.data.output_dir(manifest.id, group[-1].output_name)
        stamp = stamps.get(str(out), {})
        kind = str(stamp.get("kind", group[-1].kind))
        steps.append(StageResult(stage="convert", changed=False, model=manifest.id, summary=f"{kind}: {out} unchanged",
                                 check=checking(), details={"kind": kind, "out": str(out),
                                                            "files": stamp.get("outputs", {})}).to_dict())
    summary = f"{len(manifest.convert)} step(s): " + ", ".join(group_summary(g, changed=False) for g in groups)
    made = {s.output_name for s in manifest.convert}
    output = ctx.data.output_dir(manifest.id, manifest.output_name) if manifest.output_name in made else ""
    return StageResult(stage="convert", changed=False, model=manifest.id, seconds=clock["seconds"], summary=summary,
                       details={"steps": steps, "output": str(output)})


def check_pipeline(manifest: Manifest, ctx: Context, *, inputs: Mapping[str, str] | None = None,
                   local: Mapping[str, str] | None = None, upstream_changed: bool = False,
                   keep_intermediates: bool = False) -> StageResult:
    """What `run_pipeline` would do, running and writing nothing: per step, whether it would be rebuilt and why
    (not built yet, an input digest or a parameter changed, an output missing or edited). `upstream_changed`
    says the fetch before it would change the inputs."""
    from modelrig.convert.step import check_only

    reasons: list[str] = []
    with timed() as clock, check_only():
        try:
            result = run_pipeline(manifest, ctx, inputs=inputs, local=local, keep_intermediates=keep_intermediates)
            reasons = [why for step in result.details["steps"] for why in step["reasons"]]
        except (ConversionError, UsageError, OSError) as exc:
            reasons = [f"would run: {str(exc).splitlines()[0]}"]
    if upstream_changed and not reasons:
        reasons = ["the fetched inputs would change"]
    summary = f"{len(manifest.convert)} step(s): " + ("would run" if reasons else "unchanged")
    return StageResult(stage="convert", changed=bool(reasons), check=True, model=manifest.id, reasons=reasons,
                       summary=summary, seconds=clock["seconds"])
