"""`--prune-sources`: drop a model's fetched sources once the conversion that read them is done and stamped.

Only hub-fetched sources that conversion steps read and nothing else reads (`plan.steps.prunable_sources`) are
pruned, never `local:` or `model:` sources, and only while every conversion output is current (its stamp, the
proof the conversion finished and verified, matches the inputs and parameters). The fetch stamp keeps every
file's path, size and sha256 and records `pruned` (`modelrig.fetch.prune`). When the conversion must run again
(a pin or step parameter changed, an output was deleted or edited), `restore_needed` says so and `fetch`/`up`
download the pruned sources again before converting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.fetch import locate
from modelrig.fetch.download import locked
from modelrig.fetch.prune import present_bytes, prune_folder, pruned_record
from modelrig.humansize import format_size
from modelrig.manifest import Manifest
from modelrig.plan.steps import prunable_sources


@dataclass
class PruneReport:
    """What pruning freed (or, with `check`, would free): one entry per source."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    check: bool = False
    skipped: str | None = None

    @property
    def freed_bytes(self) -> int:
        """Bytes deleted (or that would be)."""
        return sum(s["bytes"] for s in self.sources)

    def summary(self) -> str:
        """What was freed, what would be, or why nothing was."""
        if self.skipped:
            return f"nothing pruned: {self.skipped}"
        names = ", ".join(s["name"] for s in self.sources if s["bytes"])
        if self.check:
            return f"would free {format_size(self.freed_bytes)} ({names}) after conversion" if names \
                else "nothing to prune"
        if not names:
            already = ", ".join(s["name"] for s in self.sources)
            return f"nothing to prune ({already} already pruned)" if already else "nothing to prune"
        files = sum(s["files"] for s in self.sources)
        return (f"freed {format_size(self.freed_bytes)} ({files} files of {names}); the fetch stamps keep every "
                "file's sha256")

    def to_dict(self) -> dict[str, Any]:
        """The `pruned` member of the convert stage's details."""
        return {"sources": list(self.sources), "freed_bytes": self.freed_bytes, "check": self.check,
                "skipped": self.skipped, "summary": self.summary()}


def prune_line(pruned: dict[str, Any]) -> str:
    """The human line of a `PruneReport.to_dict()`: `prune    changed   freed 1.2 GB (...)`."""
    state = "would change" if pruned["check"] and pruned["freed_bytes"] else \
        "changed" if pruned["freed_bytes"] and not pruned["check"] else "unchanged"
    return f"{'prune':<8} {state:<9} {pruned['summary']}"


def prune_enabled(flag: bool | None, ctx: Context) -> bool:
    """`--prune-sources` / `--no-prune-sources` when given, else the host config's `convert.prune_sources`."""
    return ctx.config.convert.prune_sources if flag is None else flag


def _folders(manifest: Manifest, ctx: Context, *, store: Path | None,
             inputs: Mapping[str, str] | None) -> dict[str, Path]:
    """The store folder of each prunable source that has been fetched (and is not overridden by `--input`)."""
    found: dict[str, Path] = {}
    for name in prunable_sources(manifest):
        try:
            folder = locate.source_dir(name, manifest.weights[name], ctx, store=store)
        except locate.NotOnDisk:
            continue
        given = (inputs or {}).get(name)
        if given is None or Path(given).expanduser().absolute() == folder.absolute():
            found[name] = folder
    return found


def restore_needed(manifest: Manifest, ctx: Context, *, store: Path | None = None,
                   local: Mapping[str, str] | None = None) -> bool:
    """True when a source of `manifest` is pruned and its conversion would run again (so fetch must download
    it first); reads stamps only. Imports the converters (and torch) only when a source is pruned, so a fetch
    with nothing pruned runs where torch is not installed."""
    folders = _folders(manifest, ctx, store=store, inputs=None)
    if not manifest.convert or not any(pruned_record(f) for f in folders.values()):
        return False
    from modelrig.convert.pipeline import check_pipeline

    inputs = {name: str(folder) for name, folder in folders.items()}
    return check_pipeline(manifest, ctx, inputs=inputs, local=local).changed


def prune_sources(manifest: Manifest, ctx: Context, *, store: Path | None = None,
                  inputs: Mapping[str, str] | None = None, local: Mapping[str, str] | None = None,
                  keep_intermediates: bool = False, check: bool = False) -> PruneReport:
    """Delete the files of every prunable fetched source of `manifest` once its conversion is current.

    With `check`, delete nothing and report the bytes on disk that pruning would free after the conversion.
    """
    from modelrig.convert.pipeline import check_pipeline

    report = PruneReport(check=check)
    folders = _folders(manifest, ctx, store=store, inputs=inputs)
    if check:
        report.sources = [{"name": n, "path": str(f), "files": 0, "bytes": present_bytes(f)}
                          for n, f in folders.items()]
        return report
    given = {**{n: str(f) for n, f in folders.items()}, **dict(inputs or {})}
    stale = check_pipeline(manifest, ctx, inputs=given, local=local, keep_intermediates=keep_intermediates)
    if stale.changed:
        report.skipped = "the conversion is not current (" + "; ".join(stale.reasons[:2]) + ")"
        return report
    for name, folder in folders.items():
        with locked(folder):
            files, freed = prune_folder(folder, by=manifest.id)
        report.sources.append({"name": name, "path": str(folder), "files": files, "bytes": freed})
    return report
