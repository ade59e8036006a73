"""Where each weight source of a manifest is on disk: decided here once, for convert, render and up alike.

A hub source lives where `modelrig fetch` put it, `<store>/<hub>/<org>--<name>/`, on the hub it was actually
fetched from: the first hub of the source's preference order whose folder holds a finished fetch stamp (after a
fallback from the Hugging Face Hub to ModelScope, that is ModelScope's folder). A `local:` source is the user's
folder; a `model:` source is the other model's final output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelrig.config import Context, local_weights_dir, store_folder
from modelrig.errors import UsageError
from modelrig.manifest import HubRef, Manifest, WeightSource
from modelrig.stamp import read_stamp


class NotOnDisk(LookupError):
    """A weight source is not (yet) on disk; the message says where it was looked for and what makes it."""


def _hub_order(source: WeightSource, ctx: Context) -> list[tuple[str, HubRef]]:
    hubs = list(source.hubs)
    prefer = ctx.config.hub.prefer
    if prefer in ("huggingface", "modelscope") and not source.prefer:
        hubs.sort(key=lambda item: item[0] != prefer)
    return hubs


def source_dir(name: str, source: WeightSource, ctx: Context, *, local: Mapping[str, str] | None = None,
               store: Path | None = None) -> Path:
    """The folder holding weight source `name`; `NotOnDisk` when it has not been fetched or built yet.

    `store` is the store folder fetch used (default `<data root>/store`).
    """
    if source.local is not None:
        return local_weights_dir(name, source.local, given=local or {}, config=ctx.config)
    if source.model is not None:
        from modelrig.catalog import load_model

        other = load_model(source.model)
        if not other.convert:
            return source_dir(other.output_name, other.weights[other.output_name], ctx, local=local, store=store)
        path = ctx.data.output_dir(other.id, other.output_name)
        if read_stamp(path) is None:
            raise NotOnDisk(f"{name}: {path} not built yet: run `modelrig convert {other.id}` first")
        return path
    base = store or ctx.data.store
    hubs = _hub_order(source, ctx)
    for hub, ref in hubs:
        path = store_folder(base, hub, ref.repo)
        if read_stamp(path) is not None:
            return path
    tried = ", ".join(str(store_folder(base, h, r.repo)) for h, r in hubs)
    raise NotOnDisk(f"{name}: weights not fetched (looked in {tried}): run `modelrig fetch` first or pass "
                    f"--input {name}=DIR")


def weight_paths(manifest: Manifest, ctx: Context, *, local: Mapping[str, str] | None = None,
                 store: Path | None = None) -> dict[str, Path]:
    """The folder of every weight source and step output of `manifest`, by name.

    Sources not on disk yet map to where fetch will put them on their preferred hub (or, for `local:` sources
    not given, are left out), so launch files can be rendered before the weights arrive.
    """
    paths: dict[str, Path] = {}
    for name, source in manifest.weights.items():
        try:
            paths[name] = source_dir(name, source, ctx, local=local, store=store)
        except NotOnDisk:
            if source.model is not None:
                from modelrig.catalog import load_model

                other = load_model(source.model)
                paths[name] = ctx.data.output_dir(other.id, other.output_name)
            else:
                hub, ref = _hub_order(source, ctx)[0]
                paths[name] = store_folder(store or ctx.data.store, hub, ref.repo)
        except UsageError:  # a local source not given: nothing to point at yet
            pass
    for step in manifest.convert:
        paths[step.output_name] = ctx.data.output_dir(manifest.id, step.output_name)
    return paths
