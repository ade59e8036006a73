"""The whole plan: a manifest plus host facts become a `Plan` (torch build, precision, disk, steps); pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from pathlib import Path

from packaging.requirements import Requirement

from modelrig.config import Context, HostConfig
from modelrig.errors import HostCannotRunError
from modelrig.facts import HostFacts
from modelrig.humansize import format_memory, format_size
from modelrig.manifest import Manifest
from modelrig.plan.disk import STEP_SIZE_FACTOR, dependency_chain, model_size_gb, plan_disk
from modelrig.plan.model import EnvPlan, Plan, TorchBuild
from modelrig.plan.precision import GB, plan_precision
from modelrig.plan.steps import group_steps
from modelrig.plan.torch import TorchTable, plan_torch_build
from modelrig.stamp import read_stamp

# ---------------------------------------------------------------------------------------------------------
# The whole plan.


def _env_plan(manifest: Manifest, platform: str, torch: TorchBuild) -> EnvPlan:
    spec = manifest.env
    extras = spec.platform.get(platform)  # type: ignore[call-overload]
    packages = list(spec.packages) + (list(extras.packages) if extras else [])
    env_vars = {**spec.env, **(extras.env if extras else {})}
    tokenizers = spec.tokenizers.model_dump(exclude_none=True) if spec.tokenizers else None
    return EnvPlan(python=spec.python, torch=torch, packages=packages, tokenizers=tokenizers, env_vars=env_vars)


def _has_bitsandbytes(manifest: Manifest) -> bool:
    cuda = manifest.env.platform.get("cuda")
    packages = list(manifest.env.packages) + (list(cuda.packages) if cuda else [])
    return any(Requirement(p).name.lower() == "bitsandbytes" for p in packages)


def _fetch_steps(manifest: Manifest, *, prefix: str = "") -> list[dict[str, str]]:
    steps = []
    for name, source in manifest.weights.items():
        if source.hubs:
            hub, ref = source.hubs[0]
            pin = "" if ref.pinned else " (a moving ref: fetch resolves it to a commit and names it to pin)"
            size = f", {source.size_gb:g} GB" if source.size_gb else ""
            others = [h for h, _ in source.hubs[1:]]
            alt = f"; also on {', '.join(others)}" if others else ""
            text = f"{name}: {hub} {ref.repo}@{ref.revision}{pin}{size}{alt}"
        elif source.local is not None:
            text = f"{name}: local weights from host config local.{source.local.var} ({source.format})"
        else:
            text = f"{name}: the output of model {source.model}"
        steps.append({"stage": "fetch", "model": manifest.id, "description": prefix + text})
    return steps


def _unset_local_weights(manifests: list[Manifest], config: HostConfig) -> list[str]:
    """A warning for each user-supplied weight folder the host config does not name yet (fetch would stop there)."""
    return [f"{m.id}: {name}: local weights not set: set local.{source.local.var} in the host config (or pass "
            f"--local {source.local.var}=PATH to fetch and up) to the folder with the {source.format} weights"
            for m in manifests for name, source in m.weights.items()
            if source.local is not None and not source.local.path and source.local.var not in config.local]


def _convert_steps(manifest: Manifest) -> list[dict[str, str]]:
    steps = []
    fused = {id(step): group for group in group_steps(manifest) if len(group) > 1 for step in group}
    for step in manifest.convert:
        inputs = ", ".join(step.inputs) or "previous output"
        extra = f" ({step.convention} convention)" if step.kind == "apply_delta" else ""  # type: ignore[union-attr]
        group = fused.get(id(step))
        if group is not None and step is group[-1]:
            size = sum(STEP_SIZE_FACTOR.get(s.kind, 1.0) * model_size_gb(manifest) for s in group[:-1])
            kept = ", ".join(s.output_name for s in group[:-1])
            extra += (f"; fused with the steps before it into one pass: {kept} not written (`keep: true` or "
                      f"--keep-intermediates writes {kept}: {size:.0f} GB more disk)")
        elif group is not None:
            extra += "; read directly by the next step, not written"
        steps.append({"stage": "convert", "model": manifest.id,
                      "description": f"{step.kind}: {inputs} -> {step.output_name}{extra}"})
    return steps


def make_plan(
    manifest: Manifest, facts: HostFacts, config: HostConfig | None = None, *,
    manifests: Mapping[str, Manifest] | None = None, built: Collection[str] = (), present: Collection[str] = (),
    check_disk: bool = True, table: TorchTable | None = None,
) -> Plan:
    """Plan `manifest` on the host described by `facts`: a pure function of its arguments and the torch table.

    `manifests` maps ids to the manifests of `model:` dependencies (and theirs); `built` names dependencies whose
    outputs already exist, so their downloads and conversions are not counted; `present` names the model's own
    weight sources and step outputs already on disk, likewise. A host that cannot run the model gets a plan with
    `fits=False` and a `refusal` saying why and what would work; nothing raises for that. Without `check_disk`
    a lack of disk is no refusal (for what writes no weights, such as rendering launch files).
    """
    config = config or HostConfig()
    manifests = dict(manifests or {})
    platform = facts.platform
    warnings: list[str] = []
    refusals: list[str] = []
    try:
        torch = plan_torch_build(facts, manifest.env, config=config, table=table, warnings=warnings)
    except HostCannotRunError as exc:
        refusals.append(str(exc))
        torch = TorchBuild(version="", variant="none", index_url=None, requirements=[])
    precision = plan_precision(facts, manifest.resources, quantization_available=_has_bitsandbytes(manifest))
    warnings.extend(precision.warnings)
    if not precision.fits and precision.refusal:
        refusals.append(precision.refusal)
    deps = dependency_chain(manifest, manifests)
    warnings += _unset_local_weights([manifest, *(d for d in deps if d.id not in (built or set()))], config)
    disk = plan_disk(manifest, manifests=manifests, built=built, present=present)
    if check_disk and disk.needed_bytes > facts.disk_free_bytes:
        there = f"; {format_size(disk.present_bytes)} already there" if disk.present_bytes else ""
        refusals.append(
            f"needs {format_size(disk.needed_bytes)} of disk under {facts.data_root} (downloads "
            f"{format_size(disk.download_bytes)}, conversions {format_size(disk.convert_bytes)}, +10% and 2 GB"
            f"{there}); only {format_size(facts.disk_free_bytes)} free: free space or use a data root on a bigger "
            f"disk")
    convert_ram = max((m.resources.convert_ram_gb or 0.0 for m in [manifest, *deps]
                       if m.convert and m.id not in built), default=0.0)
    if convert_ram and convert_ram * GB > facts.ram_bytes:
        refusals.append(f"the conversions need {convert_ram:g} GB of RAM; this host has "
                        f"{format_memory(facts.ram_bytes)}: convert on a bigger host and copy the output, or add RAM")
    env = _env_plan(manifest, platform, torch)
    launch = [e for e in manifest.launch if platform in e.allowed_platforms]
    skipped = [e.name for e in manifest.launch if e not in launch]
    if skipped:
        warnings.append(f"launch entries not for {platform} hosts: {', '.join(skipped)}")

    steps: list[dict[str, str]] = []
    torch_text = (f"torch {torch.version} ({torch.variant}" + (f" from {torch.index_url})" if torch.index_url
                                                               else ", default index)")
                  if torch.version else "no usable torch build")
    steps.append({"stage": "env", "model": manifest.id,
                  "description": f"Python {env.python}, {torch_text}, {len(env.packages)} packages"})
    for dep in deps:
        if dep.id in built:
            steps.append({"stage": "fetch", "model": dep.id, "description": f"{dep.id}: already built, reused"})
            continue
        steps.extend(_fetch_steps(dep))
    steps.extend(_fetch_steps(manifest))
    for dep in deps:
        if dep.id not in built:
            steps.extend(_convert_steps(dep))
    steps.extend(_convert_steps(manifest))
    for entry in launch:
        port = f", port {entry.port}" if entry.port else ""
        steps.append({"stage": "render", "model": manifest.id,
                      "description": f"{entry.name}: {entry.kind}" + (f" ({entry.adapter})" if entry.adapter else "")
                      + port})
    for entry in launch:
        steps.append({"stage": "launch", "model": manifest.id, "description": f"start {entry.name} and check health"})

    device = {"cuda": "cuda", "mps": "mps"}.get(platform, "cpu")
    return Plan(
        model=manifest.id, platform=platform, device=device, dtype=precision.dtype,
        quantization=precision.quantization, memory_needed_gb=precision.needed_gb,
        memory_available_gb=precision.available_gb, env=env, download_bytes=disk.download_bytes,
        disk_needed_bytes=disk.needed_bytes, disk_free_bytes=facts.disk_free_bytes, steps=steps,
        launch=[e.name for e in launch], fits=not refusals, refusal="; ".join(refusals) or None,
        warnings=_unique(warnings), gpus=precision.gpus, dependencies=[d.id for d in deps],
        prunable_bytes=disk.prunable_bytes, present_bytes=disk.present_bytes,
    )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def on_disk(manifest: Manifest, ctx: Context) -> frozenset[str]:
    """Names of the model's hub sources already fetched (a fetch stamp in the store folder of one of their hubs,
    pruned ones included) and of its step outputs already built (stamped), on this data root."""
    fetched = {name for name, source in manifest.weights.items()
               if any(read_stamp(ctx.data.store_dir(hub, ref.repo)) is not None for hub, ref in source.hubs)}
    built = {step.output_name for step in manifest.convert
             if read_stamp(ctx.data.output_dir(manifest.id, step.output_name)) is not None}
    return frozenset(fetched | built)


def plan_model(manifest: Manifest, ctx: Context, *, facts: HostFacts | None = None,
               env_only: bool = False, refuse: bool = True, check_disk: bool = True) -> Plan:
    """Plan the model for this host (or recorded `facts`); raises HostCannotRunError when it does not fit.

    `model:` dependencies already built on this data root count as built, and when the facts describe this data
    root, so do the model's own sources and outputs already there (`on_disk`). With `env_only`, a plan refused
    for memory or disk still serves to build the environment, as long as it has a torch build for this host (the
    refusal is then among the plan's warnings). With `refuse=False` a plan that does not fit is returned as is;
    without `check_disk` a lack of disk is no refusal.
    """
    from modelrig.catalog import dependency_manifests

    if facts is None:
        from modelrig.facts.collect import collect

        facts = collect(ctx.data.root)
    deps = dependency_manifests(manifest)
    built = {d.id for d in deps.values() if ctx.data.output_dir(d.id, d.output_name).is_dir()}
    present = on_disk(manifest, ctx) if Path(facts.data_root) == ctx.data.root else frozenset()
    plan = make_plan(manifest, facts, ctx.config, manifests=deps, built=built, present=present,
                     check_disk=check_disk)
    if not plan.fits and refuse:
        if env_only and plan.env.torch.version:
            return dataclasses.replace(plan, warnings=[*plan.warnings, f"the model itself cannot run on this "
                                                       f"host: {plan.refusal}"])
        raise HostCannotRunError(f"{plan.model} cannot run on this host: {plan.refusal}", model=plan.model,
                                 refusal=plan.refusal, plan=plan.to_dict())
    return plan
