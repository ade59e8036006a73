"""What a fresh host would get, said before it has a toolkit env: `--check` of site.yml on a new host.

In check mode nothing is installed, so the host's engine, which answers `--check` for every stage once it exists,
is not there to ask. The planner runs on the controller instead, from the host's hardware answers (the read-only
commands `modelrig facts` runs there: sysctl and sw_vers on a Mac, nvidia-smi and /proc/meminfo on Linux) and the
host config the modelrig role would write, and says per model what each stage would do:

    would build env qwen-vl-chat (python 3.10 via conda, torch 2.14.1 mps)
    would fetch Qwen/Qwen-VL-Chat@main (19.4 GB) from https://huggingface.co
    would start demo chat on port 7860 (launchd job ai.modelrig.qwen-vl-chat.chat)

`preview_lines` is pure; `python -m modelrig.orchestrate.preview` reads one JSON request on stdin (the roles pass
it) and prints `{"ok": true, "stage": ..., "lines": [...], "tokenizers_from_source": [...]}`, or one line on
stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from modelrig.catalog import dependency_manifests, load_model
from modelrig.config import HostConfig
from modelrig.errors import ConfigError, ModelrigError
from modelrig.facts import HostFacts
from modelrig.facts.collect import OUTPUT_FILES, facts_from_outputs
from modelrig.fetch.remote import DEFAULT_HF_ENDPOINT, DEFAULT_MODELSCOPE_ENDPOINT
from modelrig.fetch.sources import hub_order
from modelrig.humansize import format_size
from modelrig.launch.render import entry_port, launchd_label, unit_name
from modelrig.manifest import Manifest
from modelrig.plan import Plan, make_plan

Stage = Literal["env", "weights", "launch"]
Supervisor = Literal["launchd", "systemd", "process"]


class PreviewRequest(BaseModel):
    """One request of a role: the stage to describe, the models, and what the controller knows of the host."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage
    models: list[str]
    #: os, arch, cpu, cpu_count, ram_bytes, disk_free_bytes, data_root, os_version (as `facts_from_outputs` takes).
    host: dict[str, Any] = {}
    #: Answers of the hardware commands, by the names of `modelrig.facts.collect.OUTPUT_FILES`.
    outputs: dict[str, str] = {}
    #: The host config the modelrig role would write (config.yaml as a mapping).
    config: dict[str, Any] = {}
    backend: Literal["venv", "conda"] = "venv"
    supervisor: Supervisor = "process"
    #: Which hub to fetch from (auto: the manifest's preference, then the config's) and endpoint overrides (the
    #: fleet hub every host downloads through).
    hub: Literal["auto", "huggingface", "modelscope"] = "auto"
    hf_endpoint: str = ""
    modelscope_endpoint: str = ""


def preview_lines(stage: Stage, manifest: Manifest, plan: Plan, config: HostConfig, *,
                  deps: Mapping[str, Manifest] | None = None, backend: str = "venv",
                  supervisor: Supervisor = "process", hub: str = "auto", hf_endpoint: str = "",
                  modelscope_endpoint: str = "") -> list[str]:
    """What `stage` would do for `manifest` on a host where nothing of modelrig exists yet."""
    if stage == "env":
        return [_env_line(manifest, plan, backend)]
    if stage == "weights":
        endpoints = {"huggingface": hf_endpoint or config.hub.hf_endpoint or DEFAULT_HF_ENDPOINT,
                     "modelscope": modelscope_endpoint or config.hub.modelscope_endpoint
                     or DEFAULT_MODELSCOPE_ENDPOINT}
        lines: list[str] = []
        for dep in (deps or {}).values():
            lines += _weights_lines(dep, config, endpoints, hub=hub, owner=f" for {dep.id}")
        return lines + _weights_lines(manifest, config, endpoints, hub=hub)
    return [_launch_line(manifest, name, config, supervisor) for name in plan.launch]


def _env_line(manifest: Manifest, plan: Plan, backend: str) -> str:
    if not plan.fits and not plan.env.torch.version:
        return f"would refuse {manifest.id}: {plan.refusal}"
    torch = plan.env.torch
    build = plan.platform if torch.variant == "default" else torch.variant
    line = f"would build env {manifest.id} (python {plan.env.python} via {backend}, torch {torch.version} {build}"
    if (plan.env.tokenizers or {}).get("source") == "git":
        line += ", tokenizers from source with Rust"
    line += ")"
    if not plan.fits:
        line += f"; the model itself would be refused: {plan.refusal}"
    return line


def _weights_lines(manifest: Manifest, config: HostConfig, endpoints: Mapping[str, str], *, hub: str,
                   owner: str = "") -> list[str]:
    lines = []
    for name, source in manifest.weights.items():
        if source.hubs:
            chosen, ref = hub_order(source, requested=hub, prefer=config.hub.prefer)[0]
            size = format_size(source.size_gb * 1e9) if source.size_gb is not None else "size unknown"
            lines.append(f"would fetch {ref.repo}@{ref.revision} ({size}) from {endpoints[chosen]}{owner}")
        elif source.local is not None:
            path = config.local.get(source.local.var) or source.local.path
            lines.append(f"would read {name} from local weights {path}{owner}" if path else
                         f"would need local weights {name}{owner}: set local.{source.local.var} "
                         "(modelrig_local_weights)")
        elif source.model is not None:
            lines.append(f"would use the output of {source.model} as {name}{owner}")
    lines += [f"would convert {step.output_name} ({step.kind}){owner}" for step in manifest.convert]
    return lines


def _launch_line(manifest: Manifest, name: str, config: HostConfig, supervisor: Supervisor) -> str:
    entry = next(e for e in manifest.launch if e.name == name)
    job = {"launchd": f"launchd job {launchd_label(manifest.id, name)}",
           "systemd": f"systemd unit {unit_name(manifest.id, name)}",
           "process": "a supervised process"}[supervisor]
    port = entry_port(manifest.id, entry, config)
    where = f" on port {port}" if port else ""
    return f"would start demo {name}{where} ({job})"


def facts_of(request: PreviewRequest) -> HostFacts:
    """The host's facts from the hardware answers the role collected (unknown outputs are ignored)."""
    outputs = {name: text for name, text in request.outputs.items() if name in OUTPUT_FILES and text.strip()}
    return facts_from_outputs(outputs, host=request.host)


def answer(request: PreviewRequest) -> dict[str, Any]:
    """The lines of `request.stage` for every model of the request, and the models whose plan builds tokenizers
    from source (the rust_toolchain role installs Rust for them)."""
    try:
        config = HostConfig.model_validate(request.config)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"config: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    facts = facts_of(request)
    lines: list[str] = []
    rust: list[str] = []
    for model in request.models:
        manifest = load_model(model)
        deps = dependency_manifests(manifest)
        # free disk unknown (no answer from df): say what would be done, and leave the disk check to the host
        plan = make_plan(manifest, facts, config, manifests=deps, check_disk=facts.disk_free_bytes > 0)
        lines += preview_lines(request.stage, manifest, plan, config, deps=deps, backend=request.backend,
                               supervisor=request.supervisor, hub=request.hub, hf_endpoint=request.hf_endpoint,
                               modelscope_endpoint=request.modelscope_endpoint)
        if (plan.env.tokenizers or {}).get("source") == "git":
            rust.append(manifest.id)
    return {"ok": True, "stage": request.stage, "lines": lines, "tokenizers_from_source": rust}


def main() -> int:
    """Read one JSON request on stdin, print the answer as JSON; one line on stderr and status 2 otherwise."""
    try:
        request = PreviewRequest.model_validate(json.loads(sys.stdin.read()))
        print(json.dumps(answer(request)))
    except json.JSONDecodeError as exc:
        print(f"modelrig preview: stdin: not JSON ({exc.msg} at line {exc.lineno})", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"modelrig preview: stdin: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}", file=sys.stderr)
        return 2
    except ModelrigError as exc:
        print(f"modelrig preview: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
