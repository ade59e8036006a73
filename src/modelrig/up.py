"""The whole pipeline on this host (`modelrig up`): plan, env, fetch, convert, render, launch; and `down`.

`up` runs each stage in order; every stage is idempotent on its own, so a re-run with nothing changed reports
every stage `unchanged`. What `up` started is recorded in `<data root>/run/<model>/up.json`, which is what
`down` stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import HostCannotRunError
from modelrig.facts import HostFacts
from modelrig.manifest import Manifest
from modelrig.plan import Plan
from modelrig.result import StageResult

STATE_NAME = "up.json"


@dataclass
class UpOptions:
    """What `modelrig up` was asked to do beyond the manifest and the host config."""

    store: Path | None = None
    hub: str = "auto"
    hf_endpoint: str | None = None
    modelscope_endpoint: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    backend: str = "venv"
    python: str | None = None
    installer: str = "auto"
    offline: bool = False
    #: Launch only these entries (default: every entry the plan keeps for this host).
    entries: list[str] | None = None
    #: Recorded host facts instead of collecting this host's.
    facts: HostFacts | None = None


@dataclass
class UpReport:
    """The results of every stage of one `up` run, the demo URLs and the total time."""

    model: str
    results: list[StageResult]
    urls: dict[str, str]
    seconds: float

    @property
    def changed(self) -> bool:
        """True when any stage changed something."""
        return any(r.changed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the `--json` output of `modelrig up`)."""
        return {"model": self.model, "changed": self.changed, "seconds": round(self.seconds, 3),
                "urls": dict(self.urls), "stages": [r.to_dict() for r in self.results]}


def state_file(ctx: Context, model_id: str) -> Path:
    """Where `up` records what it started for a model."""
    return ctx.data.run / model_id / STATE_NAME


def host_facts(ctx: Context) -> HostFacts:
    """This host's facts."""
    from modelrig.facts.collect import collect

    return collect(ctx.data.root)


def dependency_manifests(manifest: Manifest) -> dict[str, Manifest]:
    """Every manifest reachable through `model:` sources, by id."""
    from modelrig.cli.plan import dependency_manifests as deps

    return deps(manifest)


def plan_model(manifest: Manifest, ctx: Context, *, facts: HostFacts | None = None) -> Plan:
    """Plan the model for this host (or recorded facts); raises HostCannotRunError when it does not fit."""
    from modelrig.planner import make_plan

    deps = dependency_manifests(manifest)
    built = {d.id for d in deps.values() if ctx.data.output_dir(d.id, d.output_name).is_dir()}
    plan = make_plan(manifest, facts or host_facts(ctx), ctx.config, manifests=deps, built=built)
    if not plan.fits:
        raise HostCannotRunError(f"{plan.model} cannot run on this host: {plan.refusal}")
    return plan


def env_stage(manifest: Manifest, plan: Plan, ctx: Context, *, options: UpOptions) -> StageResult:
    """Build (or find) the model's environment."""
    from modelrig.envs import build_env

    return build_env(plan.env, data=ctx.data, config=ctx.config, backend=options.backend,  # type: ignore[arg-type]
                     python=options.python, installer=options.installer,  # type: ignore[arg-type]
                     offline=options.offline, model=manifest.id)
