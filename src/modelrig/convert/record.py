"""The record of a finished pipeline, so a re-run with nothing changed is answered without the converters.

After `run_pipeline` finishes, it records the manifest's steps, the content digests of every input it read from
outside (fetched or local weights, `--input` folders) and each output's stamp key. A later run whose steps and
inputs are the same, and whose outputs still carry those stamps untouched, is unchanged: it needs neither the
converters nor torch, which is most of a second `modelrig up` or Ansible run. Anything else (no record, a step
edited, an input changed, an output missing or edited) falls back to the full pipeline, which decides step by step.
The record lives in the cache: deleting it only costs the next run its shortcut.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.convert.step import FORMAT_VERSION, damaged_outputs, file_digests, input_files
from modelrig.manifest import ConvertStep, Manifest
from modelrig.stamp import atomic_write_text, read_stamp

#: Bump when what the record holds changes.
RECORD_VERSION = 1


def record_path(ctx: Context, model_id: str) -> Path:
    """Where the record of `model_id`'s pipeline is kept."""
    return ctx.data.cache / "pipelines" / f"{model_id}.json"


def external_inputs(manifest: Manifest, inputs: Mapping[str, str]) -> list[str]:
    """Names the steps read that no step of the manifest writes (or that `--input` points elsewhere), sorted."""
    outputs = {s.output_name for s in manifest.convert}
    names: set[str] = set()
    previous: str | None = None
    for step in manifest.convert:
        read = list(step.inputs) or ([previous] if previous else [])
        names |= {n for n in read if n not in outputs or n in inputs}
        previous = step.output_name
    return sorted(names)


def fingerprint(manifest: Manifest, groups: list[list[ConvertStep]], folders: Mapping[str, Path], *,
                keep_intermediates: bool, cache: Path | None = None, persist: bool = True,
                contents: bool = True) -> dict[str, Any]:
    """What a finished run depended on: its steps and grouping, and each external input's folder and (with
    `contents`) the digests of its files (from stamps and the digest cache where known, else hashed)."""
    inputs: dict[str, Any] = {}
    for name, folder in sorted(folders.items()):
        inputs[name] = {"path": str(folder)}
        if contents:
            base = folder if folder.is_dir() else folder.parent
            found = file_digests(input_files(folder), cache=cache, persist=persist)
            inputs[name]["files"] = {str(Path(p).relative_to(base)): d for p, d in found.items()}
    return {"version": [RECORD_VERSION, FORMAT_VERSION], "keep_intermediates": keep_intermediates,
            "steps": [s.model_dump(mode="json") for s in manifest.convert],
            "groups": [[s.output_name for s in g] for g in groups], "inputs": inputs}


def read_record(ctx: Context, model_id: str, shape: dict[str, Any]) -> dict[str, Any] | None:
    """The record of `model_id`'s last finished run when its steps, grouping and input folders are those of
    `shape` (a fingerprint without contents), else None: only then are the inputs worth hashing to compare."""
    try:
        record = json.loads(record_path(ctx, model_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict):
        return None
    recorded = dict(record["fingerprint"])
    recorded["inputs"] = {n: {"path": v.get("path")} for n, v in (recorded.get("inputs") or {}).items()
                          if isinstance(v, dict)}
    return record if recorded == shape else None


def current_outputs(record: dict[str, Any], finger: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The stamps of the outputs (folder -> stamp) when `record` was made from `finger` and every output still
    holds the stamp it recorded, its files untouched; None when the pipeline must decide step by step."""
    if record.get("fingerprint") != finger:
        return None
    stamps: dict[str, dict[str, Any]] = {}
    for out, key in (record.get("outputs") or {}).items():
        stamp = read_stamp(Path(out))
        if not stamp or stamp.get("key") != key or damaged_outputs(Path(out), stamp):
            return None
        stamps[out] = stamp
    return stamps or None


def write_record(ctx: Context, model_id: str, finger: dict[str, Any], outputs: list[Path]) -> None:
    """Record a finished run: its fingerprint and the stamp key of each output folder."""
    keys = {str(out): (read_stamp(out) or {}).get("key") for out in outputs}
    if not all(keys.values()):
        return
    with contextlib.suppress(OSError):
        atomic_write_text(record_path(ctx, model_id),
                          json.dumps({"fingerprint": finger, "outputs": keys}, indent=1, sort_keys=True))
