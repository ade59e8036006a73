"""The whole pipeline on this host (`modelrig up`): plan, env, fetch, convert, render, launch; and `down`.

`up` runs each stage in order; every stage is idempotent on its own, so a re-run with nothing changed reports
every stage `unchanged`. What `up` started is recorded in `<data root>/run/<model>/up.json`, which is what
`down` stops.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.catalog import dependency_manifests
from modelrig.config import Context
from modelrig.errors import UsageError
from modelrig.facts import HostFacts
from modelrig.manifest import Manifest
from modelrig.outputs import EnvOutput, FetchOutput, LaunchedEntry, LaunchOutput, RenderOutput, read
from modelrig.plan import Plan, plan_model
from modelrig.result import StageResult, timed
from modelrig.stamp import digest, read_stamp, write_json

STATE_NAME = "up.json"
#: The plan fields whose change means a different setup (free disk and similar measurements are left out).
PLAN_KEY_FIELDS = ("model", "platform", "device", "dtype", "quantization", "env", "launch")


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
    #: Delete the fetched sources only conversions read once they are converted (`--prune-sources`).
    prune_sources: bool = False


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
        return {"ok": True, "stage": "up", "model": self.model, "changed": self.changed,
                "check": any(r.check for r in self.results), "seconds": round(self.seconds, 3),
                "reasons": [f"{r.stage}: {why}" for r in self.results for why in r.reasons],
                "urls": dict(self.urls), "stages": [r.to_dict() for r in self.results]}


def state_file(ctx: Context, model_id: str) -> Path:
    """Where `up` records what it started for a model."""
    return ctx.data.run / model_id / STATE_NAME


def env_stage(manifest: Manifest, plan: Plan, ctx: Context, *, options: UpOptions,
              check: bool = False) -> StageResult:
    """Build (or find) the model's environment; with `check`, only say whether that would change anything."""
    from modelrig.envs import build_env

    return build_env(plan.env, data=ctx.data, config=ctx.config, backend=options.backend,  # type: ignore[arg-type]
                     python=options.python, installer=options.installer,  # type: ignore[arg-type]
                     offline=options.offline, model=manifest.id, check=check)


def fetch_stage(manifest: Manifest, ctx: Context, *, options: UpOptions, check: bool = False) -> StageResult:
    """Download (or find) the model's weights; with `check`, only say whether that would change anything."""
    from modelrig.fetch import FetchOptions, fetch_model
    from modelrig.orchestrate.prune import restore_needed

    fetch_options = FetchOptions(hub=options.hub, store=options.store, hf_endpoint=options.hf_endpoint,
                                 modelscope_endpoint=options.modelscope_endpoint, local=dict(options.local),
                                 check=check, restore_pruned=restore_needed(manifest, ctx, store=options.store,
                                                                            local=options.local))
    fetch_options.log = lambda line: None
    return fetch_model(manifest, ctx, options=fetch_options)


def weight_paths(manifest: Manifest, ctx: Context, *, options: UpOptions) -> dict[str, Path]:
    """Folders of the weight sources (where fetch put them), of `model:` dependencies' outputs and of the step
    outputs (`fetch.locate.weight_paths`)."""
    from modelrig.fetch.locate import weight_paths as locate

    return locate(manifest, ctx, local=options.local, store=options.store)


def default_env_python(plan: Plan, ctx: Context) -> Path:
    """The interpreter of the env the plan builds with the host config's defaults (what `modelrig render` writes into
    the launch files when not given one)."""
    from modelrig.envs.build import prepare_env_build

    return Path(prepare_env_build(plan.env, data=ctx.data, config=ctx.config).python)


def render_stage(manifest: Manifest, plan: Plan, ctx: Context, *, python: Path, paths: dict[str, Path],
                 options: UpOptions, check: bool = False) -> StageResult:
    """Render the launch scripts for the plan's entries; with `check`, only say what would be written."""
    from modelrig.launch.render import render

    return render(manifest, plan, ctx.data.launch / manifest.id, paths=paths, python=python, config=ctx.config,
                  entries=options.entries, cache_dir=ctx.data.cache, log_dir=ctx.data.run / manifest.id,
                  check=check)


def convert_stage(manifest: Manifest, ctx: Context, *, fetched: StageResult, options: UpOptions) -> StageResult:
    """Run the manifest's conversion steps (each idempotent on its own) on the folders fetch reported; with
    `options.prune_sources`, then prune the sources only they read (`details.pruned`, one more summary clause)."""
    from modelrig.convert.pipeline import run_pipeline
    from modelrig.orchestrate.prune import prune_sources

    inputs = {s.name: s.path for s in read(FetchOutput, fetched).sources if s.name in manifest.weights}
    result = run_pipeline(manifest, ctx, inputs=inputs, local=options.local)
    if options.prune_sources:
        report = prune_sources(manifest, ctx, store=options.store, inputs=inputs, local=options.local)
        result.details["pruned"] = report.to_dict()
        result.summary += f"; prune: {report.summary()}"
        result.changed = result.changed or report.freed_bytes > 0
    return result


def dependency_stages(manifest: Manifest, plan: Plan, ctx: Context, *, options: UpOptions) -> list[StageResult]:
    """Fetch and convert the `model:` dependencies whose output is not built yet (e.g. the merged LLM of a
    vision model), in the plan's order; their results say which model they are for."""
    manifests = dependency_manifests(manifest)
    results: list[StageResult] = []
    for dep_id in plan.dependencies:
        dep = manifests[dep_id]
        if read_stamp(ctx.data.output_dir(dep.id, dep.output_name)) is not None:
            continue
        fetched = fetch_stage(dep, ctx, options=options)
        stages = [fetched]
        if dep.convert:
            stages.append(convert_stage(dep, ctx, fetched=fetched, options=options))
        for result in stages:
            result.summary = f"[{dep.id}] {result.summary}"
            results.append(result)
    return results


def launch_stage(manifest: Manifest, ctx: Context, rendered: StageResult, *, restart: bool) -> StageResult:
    """Start every rendered entry and wait for its health check; `restart` first stops running ones (their
    environment or weights changed under them)."""
    from modelrig.launch import start, stop, supervisor_for

    supervisor = supervisor_for(ctx.config.serve.supervisor).name
    run_dir = ctx.data.run / manifest.id
    started = time.perf_counter()
    entries: dict[str, LaunchedEntry] = {}
    changed = False
    for name, entry in read(RenderOutput, rendered).entries.items():
        folder = Path(entry.dir)
        if restart:
            stop(folder, supervisor=supervisor, run_dir=run_dir)
        result = start(folder, supervisor=supervisor, run_dir=run_dir)
        changed = changed or result.changed
        entries[name] = LaunchedEntry(dir=str(folder), kind=entry.kind, supervisor=supervisor,
                                      url=result.details.get("url"), pid=result.details.get("pid"),
                                      summary=result.summary)
    running = ", ".join(f"{n} ({e.kind})" for n, e in entries.items())
    summary = (f"started {running}, healthy" if changed else f"{running} already running, healthy") if entries \
        else "nothing to launch on this host"
    output = LaunchOutput(entries=entries, supervisor=supervisor)
    return StageResult(stage="launch", changed=changed, summary=summary, model=manifest.id,
                       seconds=time.perf_counter() - started, details=dataclasses.asdict(output))


def up(manifest: Manifest, ctx: Context, *, options: UpOptions | None = None,
       on_stage: Callable[[StageResult], None] | None = None) -> UpReport:
    """Run plan, env, fetch, convert, render and launch for `manifest` on this host; record what was started.

    `on_stage` is called with each stage's result as soon as it is done (the CLI prints one line each).
    """
    options = options or UpOptions()
    emit = on_stage or (lambda result: None)
    begun = time.perf_counter()
    results: list[StageResult] = []

    def done(result: StageResult) -> StageResult:
        results.append(result)
        emit(result)
        return result

    previous = read_state(ctx, manifest.id)
    with timed() as clock:
        plan = plan_model(manifest, ctx, facts=options.facts)
    plan_key = digest({k: v for k, v in plan.to_dict().items() if k in PLAN_KEY_FIELDS})
    torch = plan.env.torch
    done(StageResult(stage="plan", changed=previous.get("plan_key") != plan_key, model=manifest.id,
                     seconds=clock["seconds"],
                     summary=f"{plan.platform}: torch {torch.version} [{torch.variant}], {plan.dtype}"
                     + (f" {plan.quantization}" if plan.quantization else "")
                     + f", launch {', '.join(plan.launch) or 'nothing'}",
                     details={"plan": plan.to_dict(), "key": plan_key, "warnings": list(plan.warnings)}))
    env = done(env_stage(manifest, plan, ctx, options=options))
    built = read(EnvOutput, env)
    python = Path(built.python)
    dependencies = [done(result) for result in dependency_stages(manifest, plan, ctx, options=options)]
    fetched = done(fetch_stage(manifest, ctx, options=options))
    paths = weight_paths(manifest, ctx, options=options)
    converted = done(convert_stage(manifest, ctx, fetched=fetched, options=options)) if manifest.convert else None
    rendered = done(render_stage(manifest, plan, ctx, python=python, paths=paths, options=options))
    # pruning the sources alone changes nothing the services read
    reconverted = bool(converted and any(step["changed"] for step in converted.details.get("steps", [])))
    underneath = env.changed or fetched.changed or reconverted or any(r.changed for r in dependencies)
    # entries started by an earlier `up --entry ...` stay recorded, so `down` still stops them; the entries about
    # to start are recorded before they start, so `down` can stop them even when a later one fails to come up
    entries = {**previous.get("entries", {}), **{n: {"dir": e.dir, "pid": None, "kind": e.kind}
                                                  for n, e in read(RenderOutput, rendered).entries.items()}}
    state = {"model": manifest.id, "plan_key": previous.get("plan_key"), "env": built.path,
             "urls": previous.get("urls", {}), "supervisor": ctx.config.serve.supervisor,
             "run_dir": str(ctx.data.run / manifest.id), "entries": entries}
    write_json(state_file(ctx, manifest.id), state)
    launched = done(launch_stage(manifest, ctx, rendered, restart=underneath))
    running = read(LaunchOutput, launched).entries
    urls = {name: e.url for name, e in running.items() if e.url}
    for name, e in running.items():
        entries[name]["pid"] = e.pid
    write_json(state_file(ctx, manifest.id), {**state, "plan_key": plan_key, "urls": {**state["urls"], **urls}})
    return UpReport(model=manifest.id, results=results, urls=urls, seconds=time.perf_counter() - begun)


def check_up(manifest: Manifest, ctx: Context, *, options: UpOptions | None = None,
             on_stage: Callable[[StageResult], None] | None = None) -> UpReport:
    """What `up` would do, stage by stage, touching nothing: each result has `check=True` and its reasons.

    Nothing is built, downloaded, converted, written or started; the data root is left byte-identical.
    """
    options = options or UpOptions()
    emit = on_stage or (lambda result: None)
    begun = time.perf_counter()
    results: list[StageResult] = []

    def done(result: StageResult) -> StageResult:
        result.check = True
        results.append(result)
        emit(result)
        return result

    previous = read_state(ctx, manifest.id)
    plan = plan_model(manifest, ctx, facts=options.facts)
    plan_key = digest({k: v for k, v in plan.to_dict().items() if k in PLAN_KEY_FIELDS})
    plan_changed = previous.get("plan_key") != plan_key
    done(StageResult(stage="plan", changed=plan_changed, model=manifest.id,
                     summary=f"{plan.platform}: torch {plan.env.torch.version} [{plan.env.torch.variant}]",
                     reasons=(["no earlier `up` of this model" if not previous else "the plan changed"]
                              if plan_changed else []), details={"plan": plan.to_dict(), "key": plan_key}))
    env = done(env_stage(manifest, plan, ctx, options=options, check=True))
    for dep_id in plan.dependencies:
        dep = dependency_manifests(manifest)[dep_id]
        if read_stamp(ctx.data.output_dir(dep.id, dep.output_name)) is None:
            done(StageResult(stage="fetch", changed=True, model=manifest.id, summary=f"[{dep.id}] would be built",
                             reasons=[f"{dep.id}: its output {dep.output_name} is not built yet"]))
    fetched = done(fetch_stage(manifest, ctx, options=options, check=True))
    if manifest.convert:
        done(check_convert(manifest, ctx, options=options, upstream_changed=fetched.changed))
    paths = weight_paths(manifest, ctx, options=options)
    rendered = done(render_stage(manifest, plan, ctx, python=Path(read(EnvOutput, env).python), paths=paths,
                                 options=options, check=True))
    launch_reasons, _ = check_launch(manifest, ctx, rendered=rendered, supervisor=ctx.config.serve.supervisor)
    # pruning the sources alone restarts nothing
    underneath = [r.stage for r in results if r.changed and r.stage in ("env", "fetch", "convert", "render")
                  and not (r.reasons and all(why.startswith("prune: ") for why in r.reasons))]
    if underneath and not launch_reasons:
        launch_reasons.append(f"restart: {', '.join(underneath)} would change under the running services")
    done(StageResult(stage="launch", changed=bool(launch_reasons), model=manifest.id, reasons=launch_reasons,
                     summary="services would be (re)started" if launch_reasons else "services running, healthy"))
    return UpReport(model=manifest.id, results=results, urls=dict(previous.get("urls", {})),
                    seconds=time.perf_counter() - begun)


def check_convert(manifest: Manifest, ctx: Context, *, options: UpOptions, upstream_changed: bool) -> StageResult:
    """What the conversion steps (and, with `options.prune_sources`, the pruning after them) would do."""
    from modelrig.convert.pipeline import check_pipeline

    converting = check_pipeline(manifest, ctx, local=options.local, upstream_changed=upstream_changed)
    if options.prune_sources:
        from modelrig.orchestrate.prune import prune_sources

        report = prune_sources(manifest, ctx, store=options.store, local=options.local, check=True)
        converting.details["pruned"] = report.to_dict()
        if report.freed_bytes:
            converting.changed = True
            converting.reasons.append(f"prune: {report.summary()}")
    return converting


def check_launch(manifest: Manifest, ctx: Context, *, rendered: StageResult,
                 supervisor: str) -> tuple[list[str], list[tuple[Path, StageResult]]]:
    """Why each rendered entry would be (re)started, and each entry folder with its check."""
    from modelrig.launch import check as check_entry

    reasons: list[str] = []
    checked: list[tuple[Path, StageResult]] = []
    for name, entry in read(RenderOutput, rendered).entries.items():
        folder = Path(entry.dir)
        if not (folder / "entry.json").is_file():
            reasons.append(f"{name}: not rendered yet")
            continue
        result = check_entry(folder, supervisor=supervisor, run_dir=ctx.data.run / manifest.id)
        reasons.extend(result.reasons)
        checked.append((folder, result))
    return reasons, checked


def check_down(model_id: str, ctx: Context) -> StageResult:
    """What `down` would stop, touching nothing."""
    from modelrig.launch import status

    state = read_state(ctx, model_id)
    running = []
    for name, entry in state.get("entries", {}).items():
        if (Path(entry["dir"]) / "entry.json").is_file() and status(
                Path(entry["dir"]), supervisor=state.get("supervisor", "auto"),
                run_dir=Path(state.get("run_dir") or ctx.data.run / model_id))["running"]:
            running.append(name)
    return StageResult(stage="down", changed=bool(running), check=True, model=model_id,
                       reasons=[f"{name}: running" for name in running],
                       summary=f"would stop {', '.join(running)}" if running else "nothing is running")


def read_state(ctx: Context, model_id: str) -> dict[str, Any]:
    """What the last `up` of a model recorded, or {}."""
    try:
        return json.loads(state_file(ctx, model_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def down(model_id: str, ctx: Context) -> StageResult:
    """Stop every entry the last `up` of `model_id` started; `changed=False` when nothing was running."""
    from modelrig.launch import stop
    from modelrig.launch.render import ENTRY_FILE

    started = time.perf_counter()
    state = read_state(ctx, model_id)
    if not state:
        # Started another way (`modelrig launch`, or the Ansible roles, which launch each rendered entry): stop
        # every rendered entry of the model, as `modelrig stop MODEL` does.
        rendered = sorted(p.parent for p in (ctx.data.launch / model_id).glob(f"*/{ENTRY_FILE}"))
        if not rendered:
            raise UsageError(f"{model_id}: nothing to stop ({state_file(ctx, model_id)} not found and nothing "
                             f"rendered under {ctx.data.launch / model_id}; was it started with `modelrig up`?)")
        state = {"supervisor": ctx.config.serve.supervisor,
                 "entries": {folder.name: {"dir": str(folder)} for folder in rendered}}
    stopped: list[str] = []
    details: dict[str, Any] = {}
    for name, entry in state.get("entries", {}).items():
        result = stop(Path(entry["dir"]), supervisor=state.get("supervisor", "auto"),
                      run_dir=Path(state.get("run_dir") or ctx.data.run / model_id))
        details[name] = result.details
        if result.changed:
            stopped.append(name)
    summary = f"stopped {', '.join(stopped)}" if stopped else "nothing was running"
    return StageResult(stage="down", changed=bool(stopped), summary=summary, model=model_id,
                       seconds=time.perf_counter() - started, details={"entries": details})
