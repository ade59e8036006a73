"""The fetch stage: every weight source of a manifest fetched (or checked), with a disk preflight and a dry run."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context, local_weights_dir, store_folder
from modelrig.errors import DiskSpaceError, FetchError, HubUnreachableError, UsageError
from modelrig.fetch.download import download, locked, plan_matches_stamp, stamp_is_current
from modelrig.fetch.prune import PRUNED_KEY, pinned_pruned_stamp, plan_pruned_stamp, pruned_note
from modelrig.fetch.remote import Endpoints, HubUnreachable, endpoints_for, resolve_source
from modelrig.fetch.sources import (
    DEFAULT_HEADROOM,
    HUBS,
    RemoteFile,
    SourcePlan,
    hub_order,
    human,
    needed_bytes,
    stamp_on_any_hub,
)
from modelrig.manifest import Manifest, WeightSource
from modelrig.netcheck import unreachable_hint
from modelrig.plan.steps import reads_directly
from modelrig.result import StageResult, timed
from modelrig.stamp import cached_sha256, read_stamp


@dataclass
class FetchOptions:
    """What `modelrig fetch` was asked to do."""

    hub: str = "auto"
    store: Path | None = None
    dry_run: bool = False
    verify: bool = False
    hf_endpoint: str | None = None
    modelscope_endpoint: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    headroom: int = DEFAULT_HEADROOM
    #: Only say whether a fetch would download anything, and why; download and write nothing.
    check: bool = False
    #: Download sources pruned after their conversion again (else they stay pruned, reported as such; a source
    #: the model's launch reads directly is always restored).
    restore_pruned: bool = False
    #: Stop a fetch still downloading into the same folder (one an interrupted play left on the host) and resume
    #: from what it left, instead of failing `busy`.
    take_over: bool = False
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def fetch_model(manifest: Manifest, ctx: Context, *, options: FetchOptions) -> StageResult:
    """Download every hub source of `manifest` (verified), check its local sources, and report what it did.

    With `options.check`, download and write nothing: see `check_fetch`.
    """
    if options.check:
        return check_fetch(manifest, ctx, options=options)
    endpoints = endpoints_for(ctx.config, hf_endpoint=options.hf_endpoint,
                              modelscope_endpoint=options.modelscope_endpoint)
    store = (options.store or ctx.data.store).expanduser().absolute()
    notes: list[str] = []
    sources: list[dict[str, Any]] = []
    with timed() as clock:
        current: list[tuple[str, dict[str, Any]]] = []
        pruned: list[tuple[str, dict[str, Any]]] = []
        plans: list[SourcePlan] = []
        for name, source in manifest.weights.items():
            if source.model is not None:
                notes.append(f"{name}: output of model {source.model}, produced by its own pipeline")
                continue
            if source.local is not None:
                sources.append(_local_source(name, source, ctx, options, notes))
                continue
            done = _current_stamp(name, source, store, options)
            if done is not None:
                current.append((name, done))
                continue
            kept = None if _restore(manifest, name, options) else pinned_pruned_stamp(source, store,
                                                                                     requested=options.hub)
            if kept is not None:
                pruned.append((name, kept))
                continue
            try:
                plans.append(_plan_with_fallback(name, source, store, endpoints, options,
                                                 prefer=ctx.config.hub.prefer))
            except HubUnreachableError:
                earlier = _fetched_moving_ref(source, store, options)
                if earlier is None:
                    raise
                if earlier.get(PRUNED_KEY) and not _restore(manifest, name, options):
                    pruned.append((name, earlier))
                    continue
                note = (f"{name}: no hub reachable; using commit {earlier['commit']} of "
                        f"{earlier['repo']}@{earlier['revision']} fetched earlier (run fetch with a hub reachable "
                        "to move to the ref's newest commit)")
                options.log(f"modelrig: warning: {note}")
                notes.append(note)
                current.append((name, earlier))
        for plan in list(plans):
            kept = None if _restore(manifest, plan.name, options) else plan_pruned_stamp(plan)
            if kept is not None:
                plans.remove(plan)
                pruned.append((plan.name, kept))
        for name, stamp in pruned:
            notes.append(pruned_note(name, stamp, manifest.id))
            sources.append({**_source_record(name, stamp, store),
                            **({"state": "pruned after conversion"} if options.dry_run else {})})
        for plan in plans:
            if plan.ref_kind == "branch":
                options.log(f"modelrig: warning: {plan.name}: {plan.hub} revision {plan.revision!r} of {plan.repo} "
                            f"is a branch (a moving ref), resolved to {plan.commit}; pin that commit in the manifest")
        pending = [p for p in plans if plan_matches_stamp(p) is None or options.verify]
        need = sum(needed_bytes(p) for p in pending)
        free = shutil.disk_usage(_existing_parent(store)).free
        disk = {"needed_bytes": need, "headroom_bytes": options.headroom, "free_bytes": free,
                "ok": free >= need + options.headroom}
        if options.dry_run:
            return _dry_run_result(manifest, plans, current, disk, notes, sources, clock)
        if pending and not disk["ok"]:
            raise DiskSpaceError(f"{store}: {human(free)} free, the download needs {human(need)} plus "
                                 f"{human(options.headroom)} headroom; free space or pass --store on a larger disk")
        downloaded_files = downloaded_bytes = 0
        for name, stamp in current:
            if options.verify:
                plan = _plan_from_stamp(name, stamp, store)
                stamp = _locked_download(plan, endpoints, verify=True, options=options, notes=notes)
                downloaded_files += len(stamp["downloaded"])
                downloaded_bytes += stamp["downloaded_bytes"]
            sources.append(_source_record(name, stamp, store))
        for plan in plans:
            stamp = plan_matches_stamp(plan)
            if stamp is None or options.verify:
                stamp = _locked_download(plan, endpoints, verify=options.verify, options=options,
                                         notes=notes)
                downloaded_files += len(stamp["downloaded"])
                downloaded_bytes += stamp["downloaded_bytes"]
            sources.append(_source_record(plan.name, stamp, store))
    changed = downloaded_files > 0
    hub_sources = [s for s in sources if s.get("hub") in HUBS]
    total_files = sum(len(s["files"]) for s in hub_sources if not s.get("pruned"))
    rate = downloaded_bytes / clock["seconds"] / 1e6 if clock["seconds"] > 0 else 0.0
    verb = "re-verified" if options.verify else "verified"
    if changed:
        summary = (f"downloaded {downloaded_files} files ({human(downloaded_bytes)}, {rate:.0f} MB/s) of "
                   f"{len(hub_sources)} sources, {total_files} files {verb}")
    else:
        summary = f"{len(hub_sources)} sources, {total_files} files in place" + (", all re-verified"
                                                                                  if options.verify else "")
    if pruned:
        summary += f", {len(pruned)} pruned after conversion"
    return StageResult(stage="fetch", changed=changed, summary=summary, model=manifest.id,
                       seconds=clock["seconds"],
                       details={"sources": sources, "notes": notes, "disk": disk, "store": str(store)})


def check_fetch(manifest: Manifest, ctx: Context, *, options: FetchOptions) -> StageResult:
    """What `fetch_model` would do, touching nothing: which sources it would download and why.

    A source pinned to a commit with its stamp in place needs no network; others are resolved on the hub
    (read-only) to compare the commit and file list with the stamp.
    """
    endpoints = endpoints_for(ctx.config, hf_endpoint=options.hf_endpoint,
                              modelscope_endpoint=options.modelscope_endpoint)
    store = (options.store or ctx.data.store).expanduser().absolute()
    reasons: list[str] = []
    sources: list[dict[str, Any]] = []
    with timed() as clock:
        for name, source in manifest.weights.items():
            if source.model is not None:
                continue
            if source.local is not None:
                try:
                    path = local_weights_dir(name, source.local, given=options.local, config=ctx.config)
                except UsageError as exc:
                    reasons.append(str(exc))
                    continue
                if not any(p.is_file() for p in path.rglob("*")):
                    reasons.append(f"{name}: local weights {source.local.var}={path}: the folder is empty")
                sources.append({"name": name, "hub": "local", "path": str(path)})
                continue
            done = _current_stamp(name, source, store, options)
            if done is not None:
                sources.append({**_source_record(name, done, store), "state": "in place"})
                continue
            restore = _restore(manifest, name, options)
            kept = pinned_pruned_stamp(source, store, requested=options.hub)
            if kept is not None and not restore:
                sources.append({**_source_record(name, kept, store), "state": "pruned after conversion"})
                continue
            plan = _plan_with_fallback(name, source, store, endpoints, options, prefer=ctx.config.hub.prefer)
            kept = kept or plan_pruned_stamp(plan)
            if kept is not None and not restore:
                sources.append({**_source_record(name, kept, store), "state": "pruned after conversion"})
                continue
            why = [f"pruned after conversion, would be downloaded again ({plan.hub} {plan.repo}@{plan.commit[:12]})"] \
                if kept is not None else _stamp_differences(plan)
            reasons.extend(f"{name}: {reason}" for reason in why)
            sources.append({"name": name, "hub": plan.hub, "repo": plan.repo, "commit": plan.commit,
                            "path": str(plan.target), "state": "to download" if why else "in place"})
    kept = sum(s.get("state") == "pruned after conversion" for s in sources)
    summary = (f"would download {sum(s.get('state') == 'to download' for s in sources)} of {len(sources)} sources"
               if reasons else f"{len(sources)} sources in place") + (f", {kept} pruned after conversion" if kept
                                                                     else "")
    return StageResult(stage="fetch", changed=bool(reasons), check=True, reasons=reasons, summary=summary,
                       model=manifest.id, seconds=clock["seconds"], details={"sources": sources, "store": str(store)})


def _restore(manifest: Manifest, name: str, options: FetchOptions) -> bool:
    """Whether a pruned source is downloaded again: when asked, or when the launch reads it directly."""
    return options.restore_pruned or reads_directly(manifest, name)


def _stamp_differences(plan: SourcePlan) -> list[str]:
    """Why the folder of `plan` does not hold a finished fetch of it (empty when it does)."""
    stamp = read_stamp(plan.target)
    if not stamp:
        return [f"not downloaded yet ({plan.hub} {plan.repo}@{plan.commit[:12]})"]
    why = []
    if stamp.get("commit") != plan.commit:
        why.append(f"{plan.repo} moved from commit {str(stamp.get('commit'))[:12]} to {plan.commit[:12]}")
    if stamp.get("include") != list(plan.include) or stamp.get("exclude") != list(plan.exclude):
        why.append("include/exclude patterns changed")
    for f in plan.files:
        local = plan.target / f.path
        if not local.is_file():
            why.append(f"{f.path} is missing")
        elif local.stat().st_size != f.size:
            why.append(f"{f.path} has {local.stat().st_size} bytes, the hub's has {f.size}")
    if not why and plan_matches_stamp(plan) is None:
        why.append("the stamp does not match the hub's file list")
    return why


def _current_stamp(name: str, source: WeightSource, store: Path, options: FetchOptions) -> dict[str, Any] | None:
    """A matching stamp for a pinned source on any hub it may come from: such a re-run needs no network."""
    return stamp_on_any_hub(source, store, requested=options.hub, accept=stamp_is_current)


def _fetched_moving_ref(source: WeightSource, store: Path, options: FetchOptions) -> dict[str, Any] | None:
    """The stamp of an earlier complete fetch of this source's branch or tag (same patterns, every file in place),
    used when no hub answers: the weights a re-run would check are already here (e.g. `modelrig up` of the demo
    model after `modelrig demo`, whose local hub is gone)."""
    try:
        order = hub_order(source, requested=options.hub, prefer="auto")
    except UsageError:
        return None
    for hub, ref in order:
        target = store_folder(store, hub, ref.repo)
        stamp = read_stamp(target)
        if not stamp or stamp.get("hub") != hub or stamp.get("repo") != ref.repo:
            continue
        if stamp.get("revision") != ref.revision or not stamp.get("commit"):
            continue
        if stamp.get("include") != list(source.include) or stamp.get("exclude") != list(source.exclude):
            continue
        if stamp.get(PRUNED_KEY) or all((target / e["path"]).is_file()
                                        and (target / e["path"]).stat().st_size == e["size"]
                                        for e in stamp.get("files", [])):
            return stamp
    return None


def _plan_with_fallback(name: str, source: WeightSource, store: Path, endpoints: Endpoints,
                        options: FetchOptions, *, prefer: str) -> SourcePlan:
    order = hub_order(source, requested=options.hub, prefer=prefer)
    failures: list[str] = []
    for index, (hub, ref) in enumerate(order):
        try:
            plan = resolve_source(name, hub, ref, source, endpoints=endpoints, store=store)
        except HubUnreachable as exc:
            failures.append(f"{hub}: {exc}")
            if index + 1 < len(order):
                options.log(f"modelrig: warning: {name}: {hub} unreachable ({exc}); falling back to "
                            f"{order[index + 1][0]}")
            continue
        return plan
    hint = unreachable_hint(endpoints.huggingface if order[0][0] == "huggingface" else endpoints.modelscope,
                            " ".join(failures))
    raise HubUnreachableError(f"{name}: no hub reachable: " + "; ".join(failures) + f"; {hint}",
                              source=name, hubs=[hub for hub, _ in order])


def _locked_download(plan: SourcePlan, endpoints: Endpoints, *, verify: bool, options: FetchOptions,
                     notes: list[str]) -> dict[str, Any]:
    with locked(plan.target, take_over=options.take_over, log=options.log) as taken:
        if taken is not None:
            notes.append(f"{plan.name}: stopped the fetch still downloading into {plan.target} (pid {taken['pid']}, "
                         f"running for {taken['running_s']} s, left by an interrupted run) and resumed its download")
        try:
            return download(plan, endpoints=endpoints, verify=verify)
        except HubUnreachable as exc:
            endpoint = endpoints.huggingface if plan.hub == "huggingface" else endpoints.modelscope
            raise HubUnreachableError(f"{plan.name}: {plan.hub}: {exc}; files finished so far are kept, run again "
                                      f"to continue; {unreachable_hint(endpoint, str(exc))}", source=plan.name,
                                      hubs=[plan.hub]) from None


def _plan_from_stamp(name: str, stamp: dict[str, Any], store: Path) -> SourcePlan:
    files = tuple(RemoteFile(path=e["path"], size=e["size"], sha256=e["sha256"]) for e in stamp["files"])
    return SourcePlan(name=name, hub=stamp["hub"], repo=stamp["repo"], revision=stamp["revision"],
                      commit=stamp["commit"], ref_kind="commit", files=files,
                      target=store_folder(store, stamp["hub"], stamp["repo"]),
                      include=tuple(stamp.get("include", [])), exclude=tuple(stamp.get("exclude", [])))


def _source_record(name: str, stamp: dict[str, Any], store: Path) -> dict[str, Any]:
    return {"name": name, "hub": stamp["hub"], "repo": stamp["repo"], "revision": stamp["revision"],
            "ref_kind": stamp.get("ref_kind", "commit"), "commit": stamp["commit"],
            "path": str(store_folder(store, stamp["hub"], stamp["repo"])),
            "files": stamp["files"], "pruned": isinstance(stamp.get(PRUNED_KEY), dict)}


def _local_source(name: str, source: WeightSource, ctx: Context, options: FetchOptions,
                  notes: list[str]) -> dict[str, Any]:
    assert source.local is not None
    var = source.local.var
    path = local_weights_dir(name, source.local, given=options.local, config=ctx.config)
    files = hash_local_tree(path, cache_file=ctx.data.cache / "digests.json")
    if not files:
        raise FetchError(f"{name}: local weights {var}={path}: the folder is empty")
    return {"name": name, "hub": "local", "repo": None, "revision": None, "commit": None, "path": str(path),
            "files": files, "pruned": False}


def _dry_run_result(manifest: Manifest, plans: list[SourcePlan], current: list[tuple[str, dict[str, Any]]],
                    disk: dict[str, Any], notes: list[str], sources: list[dict[str, Any]],
                    clock: dict[str, float]) -> StageResult:
    for name, stamp in current:
        sources.append({**{k: stamp[k] for k in ("hub", "repo", "revision", "commit", "files")}, "name": name,
                        "state": "in place"})
    for plan in plans:
        sources.append({"name": plan.name, "hub": plan.hub, "repo": plan.repo, "revision": plan.revision,
                        "commit": plan.commit, "path": str(plan.target),
                        "state": "in place" if plan_matches_stamp(plan) else "to download",
                        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in plan.files]})
    total = sum(f["size"] for s in sources if s.get("hub") in HUBS for f in s["files"])
    state = "enough" if disk["ok"] else "NOT enough"
    summary = (f"dry run: {sum(len(s['files']) for s in sources if s.get('hub') in HUBS)} files, {human(total)} in "
               f"all, {human(disk['needed_bytes'])} to download; {human(disk['free_bytes'])} free ({state} with "
               f"{human(disk['headroom_bytes'])} headroom)")
    return StageResult(stage="fetch", changed=False, summary=summary, model=manifest.id, seconds=clock["seconds"],
                       details={"sources": sources, "notes": notes, "disk": disk, "dry_run": True})


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def hash_local_tree(path: Path, *, cache_file: Path) -> list[dict[str, Any]]:
    """Path, size and sha256 of every file under `path`; files unchanged since any stage hashed them (the data
    root's digest cache, shared with convert) are not read again."""
    local = sorted(p for p in path.rglob("*") if p.is_file())
    digests = cached_sha256(local, cache=cache_file)
    return [{"path": f.relative_to(path).as_posix(), "size": f.stat().st_size, "sha256": digests[str(f)]}
            for f in local]
