"""What every conversion step shares: input digests, the idempotency key, atomic output and its stamp."""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelrig import humansize
from modelrig.errors import ConversionError, DiskSpaceError
from modelrig.fetch.prune import is_pruned_path, recorded_files
from modelrig.result import StageResult, timed
from modelrig.stamp import (
    STAMP_NAME,
    atomic_dir,
    cached_sha256,
    digest,
    read_stamp,
    sha256_file,
    write_stamp,
)

#: Bump when an algorithm changes its output, so old stamps no longer match.
FORMAT_VERSION = 1


def ensure_free_space(directory: Path, needed: int) -> None:
    """Refuse before starting when `directory`'s filesystem has less than `needed` bytes (plus 2%) free."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.02 + (16 << 20):
        raise DiskSpaceError(f"{directory}: needs {humansize.format_size(needed)} free for the output, only "
                             f"{humansize.format_size(free)} available; free space or use another --data-root")


def input_files(*sources: Path) -> list[Path]:
    """Every regular file under the given files/directories (hidden files and stamps excluded), sorted.

    A fetched folder pruned after its conversion (`modelrig.fetch.prune`) lists the files its stamp records,
    as they were before pruning, so the idempotency key of a conversion does not change when its sources go.
    """
    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_file() or (not source.exists() and is_pruned_path(source)):
            files.append(source)
        elif source.is_dir():
            found = {p for p in source.rglob("*") if p.is_file()}
            found |= {source / rel for rel in recorded_files(source)}
            files += sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(source).parts))
    return files


def stamped_digests(directory: Path) -> dict[str, str]:
    """sha256 of files an earlier stage already recorded in `directory`'s stamp (fetch: `files`; convert:
    `outputs`), for files that still have the recorded size and are not newer than the stamp."""
    stamp_path = directory / STAMP_NAME
    stamp = read_stamp(directory)
    if stamp is None:
        return {}
    recorded: dict[str, tuple[str, int | None]] = {}
    for entry in stamp.get("files", []) if isinstance(stamp.get("files"), list) else []:
        if isinstance(entry, dict) and entry.get("sha256") and entry.get("path"):
            recorded[entry["path"]] = (entry["sha256"], entry.get("size"))
    for name, sha in (stamp.get("outputs") or {}).items():
        recorded[name] = (sha, None)
    stamp_time = stamp_path.stat().st_mtime_ns
    pruned = recorded_files(directory)
    out: dict[str, str] = {}
    for rel, (sha, size) in recorded.items():
        f = directory / rel
        try:
            st = f.stat()
        except OSError:
            if rel in pruned:  # deleted after the conversion that read it: its recorded digest stands for it
                out[str(f)] = sha
            continue
        if (size is None or st.st_size == size) and st.st_mtime_ns <= stamp_time:
            out[str(f)] = sha
    return out


def file_digests(files: Iterable[Path], *, cache: Path | None = None, persist: bool = True) -> dict[str, str]:
    """sha256 of each file: from an upstream stage's stamp, from the digest cache keyed by (path, size, mtime,
    inode) when given, else computed. With `persist=False` the cache is read but never written (check mode)."""
    files = list(files)
    upstream: dict[str, str] = {}
    for directory in sorted({f.parent for f in files}):
        upstream.update(stamped_digests(directory))
    hashed = cached_sha256([f for f in files if str(f) not in upstream], cache=cache, persist=persist)
    return {str(f): upstream.get(str(f)) or hashed[str(f)] for f in files}


def step_key(kind: str, params: dict[str, Any], sources: dict[str, Path], *,
             cache: Path | None = None, persist: bool = True) -> tuple[str, dict[str, dict[str, str]]]:
    """The idempotency key of a step: its kind, parameters and the content digests of its inputs."""
    inputs: dict[str, dict[str, str]] = {}
    for role, source in sorted(sources.items()):
        source = Path(source)
        files = input_files(source)
        digests = file_digests(files, cache=cache, persist=persist)
        base = source if source.is_dir() else source.parent
        inputs[role] = {str(Path(p).relative_to(base)): d for p, d in digests.items()}
    key = digest({"kind": kind, "version": FORMAT_VERSION, "params": params, "inputs": inputs})
    return key, inputs


def damaged_outputs(out: Path, stamp: dict[str, Any]) -> list[str]:
    """Output files of a finished step that are missing or were modified after its stamp was written."""
    stamp_time = (out / STAMP_NAME).stat().st_mtime_ns
    found = []
    for name in stamp.get("outputs") or {}:
        try:
            st = (out / name).stat()
        except OSError:
            found.append(f"output {name} is missing")
            continue
        if st.st_mtime_ns > stamp_time:
            found.append(f"output {name} was modified after it was built")
    return found


def step_differences(kind: str, *, out: Path, params: dict[str, Any], sources: dict[str, Path],
                     cache: Path | None = None) -> list[str]:
    """Why `run_step` would rebuild `out` (empty when it would not); reads only, writes nothing."""
    stamp = read_stamp(out)
    if stamp is None:
        return [f"{out.name}: not built yet"]
    if any(not Path(s).exists() and not is_pruned_path(Path(s)) for s in sources.values()):
        missing = ", ".join(f"{role} ({s})" for role, s in sources.items()
                            if not Path(s).exists() and not is_pruned_path(Path(s)))
        return [f"{out.name}: input {missing} not there yet"]
    key, inputs = step_key(kind, params, sources, cache=cache, persist=False)
    why = []
    if stamp.get("key") != key:
        if stamp.get("params") != params:
            why.append(f"{out.name}: parameters changed")
        old = stamp.get("inputs") or {}
        for role in sorted(set(old) | set(inputs)):
            before, now = old.get(role, {}), inputs.get(role, {})
            changed = sorted(name for name in set(before) | set(now) if before.get(name) != now.get(name))
            if changed:
                why.append(f"{out.name}: input {role} changed ({', '.join(changed[:3])}"
                           + (f" and {len(changed) - 3} more" if len(changed) > 3 else "") + ")")
        if not why:
            why.append(f"{out.name}: built by another modelrig conversion format")
    why.extend(f"{out.name}: {problem}" for problem in damaged_outputs(out, stamp))
    return why


_CHECK_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("modelrig_convert_check_only", default=False)


def checking() -> bool:
    """True within `check_only`."""
    return _CHECK_ONLY.get()


@contextlib.contextmanager
def check_only() -> Iterator[None]:
    """Within this block `run_step` only reports what it would do (`step_differences`), running nothing."""
    token = _CHECK_ONLY.set(True)
    try:
        yield
    finally:
        _CHECK_ONLY.reset(token)


def run_step(kind: str, *, out: Path, params: dict[str, Any], sources: dict[str, Path],
             needed_bytes: Callable[[], int], body: Callable[[Path], dict[str, Any]],
             cache: Path | None = None, model: str | None = None, force: bool = False) -> StageResult:
    """Run one conversion step idempotently and atomically.

    Skips (changed=False) when `out` holds a stamp with the same key (inputs are hashed alongside the work when
    there is no stamp to compare with). Otherwise checks free disk, calls
    `body(tmp)` to fill a temporary sibling of `out`, stamps it (key, inputs, output sha256s) and renames it
    into place. `body` returns details (must include `files`: name -> sha256 of what it wrote).
    """
    out = Path(out)
    if _CHECK_ONLY.get():
        reasons = step_differences(kind, out=out, params=params, sources=sources, cache=cache)
        return StageResult(stage="convert", changed=bool(reasons), check=True, model=model, reasons=reasons,
                           summary=f"{kind}: {out} " + ("would be built" if reasons else "unchanged"),
                           details={"kind": kind, "out": str(out)})
    with timed() as t, ThreadPoolExecutor(max_workers=1) as pool:
        stamp = read_stamp(out)
        if stamp is not None and not force:
            key, inputs = step_key(kind, params, sources, cache=cache)
            if stamp.get("key") == key and not damaged_outputs(out, stamp):
                return StageResult(stage="convert", changed=False, model=model, seconds=t["seconds"],
                                   summary=f"{kind}: {out} unchanged",
                                   details={"kind": kind, "out": str(out), "files": stamp.get("outputs", {})})
            hash_alongside = False
        else:
            hash_alongside = True
        refuse_pruned(sources, out=out, model=model)
        ensure_free_space(out.parent, needed_bytes())
        with atomic_dir(out) as tmp:
            # Nothing finished to compare with: hash the inputs while converting (hashing releases the GIL).
            # Started only now, after atomic_dir has cleared stale temporaries next to `out`.
            pending = pool.submit(step_key, kind, params, sources, cache=cache) if hash_alongside else None
            details = body(tmp)
            if pending is not None:
                key, inputs = pending.result()
            outputs = dict(sorted(details.get("files", {}).items()))
            for f in sorted(tmp.iterdir()):
                if f.is_file() and f.name not in outputs:
                    outputs[f.name] = sha256_file(f)
            write_stamp(tmp, {"kind": kind, "key": key, "params": params, "inputs": inputs, "outputs": outputs})
            _fsync_dir(tmp)
    summary = details.pop("summary", f"{kind}: wrote {out}")
    details.update({"kind": kind, "out": str(out), "files": outputs})
    return StageResult(stage="convert", changed=True, model=model, seconds=t["seconds"], summary=summary,
                       details=details)


def refuse_pruned(sources: dict[str, Path], *, out: Path, model: str | None) -> None:
    """A `ConversionError` (code `sources_pruned`) when a step that must run reads a source pruned after an
    earlier conversion: it names the source and the command that downloads it again."""
    gone = [(role, Path(path)) for role, path in sorted(sources.items()) if _pruned_input(Path(path))]
    if not gone:
        return
    role, path = gone[0]
    name = model or "MODEL"
    raise ConversionError(f"{out.name} must be built again but its input {role} ({path}) was pruned after an earlier "
                          f"conversion: run `modelrig fetch {name} --restore-pruned` first (`modelrig up {name}` "
                          "does it itself)", code="sources_pruned", input=role, path=str(path))


def _pruned_input(path: Path) -> bool:
    if is_pruned_path(path):
        return True
    return path.is_dir() and any(not (path / rel).exists() for rel in recorded_files(path))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
