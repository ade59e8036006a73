"""Which conversion steps run fused: consecutive steps that feed each other, nothing else reading between them.

Pure functions of a manifest (no torch), shared by the converter and the planner's disk figure.
"""

from __future__ import annotations

from modelrig.manifest import ApplyDelta, ConvertStep, LlamaMetaToHf, Manifest, ToSafetensors

#: Step kinds whose product a following step can read without it being written.
FEEDS = (LlamaMetaToHf, ApplyDelta)
#: Step kinds that can read the previous step's product.
READS = (ApplyDelta, ToSafetensors)


def _reads(step: ConvertStep, name: str, previous: str | None) -> bool:
    if isinstance(step, ToSafetensors) and step.input is None:
        return previous == name
    return name in step.inputs


def _references(manifest: Manifest, name: str) -> int:
    """How many things besides the steps read the output `name` (the model's output, launch entries)."""
    count = int(manifest.output_name == name)
    count += sum(1 for entry in manifest.launch if entry.weights == name)
    return count


def group_steps(manifest: Manifest, *, keep_intermediates: bool = False,
                overridden: frozenset[str] = frozenset()) -> list[list[ConvertStep]]:
    """The manifest's steps grouped into runs executed as one pass each (a run of one is a plain step).

    Step i joins step i+1 when i is a `llama_meta_to_hf` or `apply_delta` step, i+1 an `apply_delta` or
    `to_safetensors` step reading i's output, nothing else reads that output (no other step, not the model's
    output, no launch entry), i is not marked `keep: true`, `keep_intermediates` is off and the output is not
    given on the command line (`--input NAME=DIR`, in `overridden`).
    """
    steps = list(manifest.convert)
    groups: list[list[ConvertStep]] = []
    for i, step in enumerate(steps):
        if groups and _joins(manifest, steps, i, keep_intermediates=keep_intermediates, overridden=overridden):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _joins(manifest: Manifest, steps: list[ConvertStep], i: int, *, keep_intermediates: bool,
           overridden: frozenset[str]) -> bool:
    prev, step = steps[i - 1], steps[i]
    name = prev.output_name
    if keep_intermediates or getattr(prev, "keep", False) or name in overridden:
        return False
    if not isinstance(prev, FEEDS) or not isinstance(step, READS) or not _reads(step, name, name):
        return False
    if isinstance(step, ApplyDelta) and step.base != name:
        return False
    readers = sum(1 for j in range(i, len(steps)) if _reads(steps[j], name, steps[j - 1].output_name))
    return readers == 1 and _references(manifest, name) == 0


def reads_directly(manifest: Manifest, name: str) -> bool:
    """Whether something besides the conversion steps reads weight source `name`: the model's output (a manifest
    without steps serves a source as it is) or a launch entry's `weights`."""
    return _references(manifest, name) > 0


def prunable_sources(manifest: Manifest) -> list[str]:
    """The weight sources `--prune-sources` may delete once the conversion is done: hub-fetched sources (never
    `local:` or `model:` ones) that a conversion step reads and nothing else reads directly. Sources of
    `tf_to_pt` steps are kept (that step opens its checkpoint before it knows whether it must run)."""
    read = {name for step in manifest.convert for name in step.inputs}
    tf_read = {name for step in manifest.convert if step.kind == "tf_to_pt" for name in step.inputs}
    return [name for name, source in manifest.weights.items()
            if source.hubs and source.local is None and source.model is None and name in read - tf_read
            and not reads_directly(manifest, name)]


def group_summary(steps: list[ConvertStep], *, changed: bool) -> str:
    """`final built (fused: llama_meta_to_hf -> apply_delta -> to_safetensors)` for a run of several steps."""
    state = "built" if changed else "unchanged"
    if len(steps) == 1:
        return f"{steps[0].output_name} {state}"
    return f"{steps[-1].output_name} {state} (fused: {' -> '.join(s.kind for s in steps)})"
