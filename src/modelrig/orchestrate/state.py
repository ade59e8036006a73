"""Whether every stage of a model is already in place on this host, asked in one process (`modelrig state`).

A provisioning run that finds everything in place should cost one engine start per host, not one per stage and
model: `model_state` asks each stage's own check (the same code `--check` runs: env stamp, fetch stamps and the
hub's commit for a moving revision, conversion records, rendered files, running and healthy services) and takes
the lock as `modelrig lock` would, comparing it with the lock file. A model is `settled` only when no stage would
change anything; the caller then skips every stage of it, and runs every stage of any other model as usual.
Nothing is written, downloaded or started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelrig.catalog import load_model, resolve_model
from modelrig.config import Context
from modelrig.errors import ModelrigError
from modelrig.manifest import Manifest
from modelrig.orchestrate.up import (
    UpOptions,
    check_convert,
    check_launch,
    default_env_python,
    env_stage,
    fetch_stage,
    render_stage,
)
from modelrig.plan import plan_model


@dataclass
class ModelState:
    """One model's answer: which stages would change (and why), what the report and the lock need."""

    model: str
    stages: dict[str, bool] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    tokenizers: dict[str, Any] | None = None
    supervisor: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    lock: str | None = None

    @property
    def settled(self) -> bool:
        """True when every stage was asked and none would change anything."""
        return bool(self.stages) and not any(self.stages.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one model of `modelrig state --json`)."""
        return {"model": self.model, "settled": self.settled, "stages": dict(self.stages),
                "reasons": list(self.reasons), "tokenizers": self.tokenizers, "supervisor": self.supervisor,
                "entries": list(self.entries), "lock": self.lock}


def model_state(model: str, ctx: Context, *, options: UpOptions, supervisor: str) -> ModelState:
    """Ask every stage of `model` whether it would change anything (touching nothing). A stage that cannot answer
    (not provisioned yet, a hub that does not answer) counts as one that would change: the caller then runs it,
    and it reports its own error."""
    state = ModelState(model=model)
    try:
        manifest = load_model(model)
        _ask(manifest, ctx, options=options, supervisor=supervisor, state=state)
    except ModelrigError as exc:
        state.stages.setdefault("error", True)
        state.reasons.append(str(exc))
    return state


def _ask(manifest: Manifest, ctx: Context, *, options: UpOptions, supervisor: str, state: ModelState) -> None:
    from modelrig.fetch.locate import weight_paths
    from modelrig.launch import status

    def note(stage: str, changed: bool, reasons: list[str]) -> None:
        state.stages[stage] = changed
        state.reasons.extend(f"{stage}: {why}" for why in reasons)

    plan = plan_model(manifest, ctx, check_disk=False)
    state.tokenizers = plan.to_dict()["env"].get("tokenizers")
    env = env_stage(manifest, plan, ctx, options=options, check=True)
    note("env", env.changed, env.reasons)
    fetched = fetch_stage(manifest, ctx, options=options, check=True)
    note("fetch", fetched.changed, fetched.reasons)
    if manifest.convert:
        converting = check_convert(manifest, ctx, options=options, upstream_changed=fetched.changed)
        note("convert", converting.changed, converting.reasons)
    if any(state.stages.values()):
        return  # a stage below would change: the caller runs every stage, the rest need not be asked
    # as `modelrig render` renders by default (what the launch module runs): the plan's env, fetch's folders
    rendered = render_stage(manifest, plan, ctx, python=default_env_python(plan, ctx),
                            paths=weight_paths(manifest, ctx), options=UpOptions(), check=True)
    note("render", rendered.changed, rendered.reasons)
    launch_reasons, checked = check_launch(manifest, ctx, rendered=rendered, supervisor=supervisor)
    for folder, result in checked:
        state.supervisor = result.details["supervisor"]
        state.entries.append(status(folder, supervisor=supervisor, run_dir=ctx.data.run / manifest.id))
    note("launch", bool(launch_reasons), launch_reasons)
    if not any(state.stages.values()):
        _ask_lock(manifest, ctx, state=state)


def _ask_lock(manifest: Manifest, ctx: Context, *, state: ModelState) -> None:
    """Whether `modelrig lock` would write a different lock file than the one in place."""
    from modelrig.lock.collect import take_lock
    from modelrig.lock.schema import dump_lock

    path = ctx.data.root / "locks" / f"{manifest.id}.lock.yaml"
    state.lock = str(path)
    lock = dump_lock(take_lock(manifest, ctx, manifest_path=resolve_model(manifest.id)))
    try:
        current = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    reasons = [] if current == lock else [f"{path}: " + ("not written yet" if current is None
                                                          else "the host differs from its lock")]
    state.stages["lock"] = bool(reasons)
    state.reasons.extend(f"lock: {why}" for why in reasons)
