"""Rendering launch entries into self-contained scripts, start scripts and service units from `launch/` templates."""

from __future__ import annotations

import ipaddress
import json
import os
import plistlib
import pwd
import secrets as _secrets
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from modelrig.config import HostConfig
from modelrig.errors import LaunchError
from modelrig.launch.escape import FILTERS, sh_name
from modelrig.launch.kinds import launch_kind
from modelrig.launch.outdir import ENTRY_FILE, claim_out_dir
from modelrig.manifest import ADAPTERS, LaunchEntry, Manifest, is_bind_address
from modelrig.plan import Plan
from modelrig.result import StageResult
from modelrig.shipped import launch_dir
from modelrig.stamp import atomic_write_text, digest, read_stamp, write_stamp

#: Generation settings every chat template starts from; an entry's `options` override them.
GENERATION_KEYS = {"max_new_tokens": 512, "temperature": 0.7, "top_p": 0.9, "top_k": None, "repetition_penalty": 1.0}

SECRETS_FILE = "secrets.env"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: `localhost` or a loopback IP address (127.0.0.0/8, ::1,
    brackets allowed). A hostname that merely starts with "127." is not loopback."""
    host = host.strip()
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def entry_port(model_id: str, entry: LaunchEntry, config: HostConfig) -> int | None:
    """The port an entry listens on: the host config's `serve.ports` for `MODEL/ENTRY`, else the manifest's, else
    the kind's default (None for jobs that listen nowhere)."""
    return config.serve.ports.get(f"{model_id}/{entry.name}") or entry.port or launch_kind(entry.kind).default_port


def unit_name(model_id: str, entry: str) -> str:
    """The systemd unit name of an entry."""
    return f"modelrig-{model_id}-{entry}.service"


def launchd_label(model_id: str, entry: str) -> str:
    """The launchd job label of an entry."""
    return f"ai.modelrig.{model_id}.{entry}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(launch_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


#: Written into every plist; launchd files cannot hold secrets.
_PLIST_NOTE = "<!-- Rendered by modelrig. Secrets stay in secrets.env (mode 0600), never in this file. -->\n"


def launchd_plist(label: str, entry_dir: Path | str, log_path: Path | str, *, user: str | None = None) -> str:
    """The launchd job of an entry, written by plistlib (every string XML-escaped; text XML cannot hold, such as
    control characters, is refused). `user` becomes `UserName`: a LaunchDaemon runs as that user, not as root
    (launchd ignores the key for LaunchAgents)."""
    job: dict[str, Any] = {
        "Label": label,
        "ProgramArguments": ["/bin/sh", f"{entry_dir}/start.sh"],
        "WorkingDirectory": str(entry_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "StandardOutPath": str(log_path),
        "StandardErrorPath": str(log_path),
    }
    if user:
        job["UserName"] = user
    try:
        text = plistlib.dumps(job, sort_keys=False).decode("utf-8")
    except ValueError as exc:
        raise LaunchError(f"cannot write the launchd plist of {label}: {exc}") from None
    head, sep, rest = text.partition("<plist")
    return head + _PLIST_NOTE + sep + rest


def served_weights(manifest: Manifest, entry: LaunchEntry) -> str:
    """The weight source or step output an entry serves."""
    return entry.weights or manifest.output_name


def _hub_sources_pinned(manifest: Manifest, revisions: Mapping[str, str]) -> list[str]:
    unpinned = []
    for name, source in manifest.weights.items():
        for hub, ref in source.hubs:
            if not ref.pinned and name not in revisions:
                unpinned.append(f"weights.{name}.{hub}.revision={ref.revision}")
    return unpinned


def render_entry(manifest: Manifest, entry: LaunchEntry, plan: Plan, paths: Mapping[str, Path | str], *,
                 config: HostConfig, python: Path | str, entry_dir: Path, bind: str | None = None,
                 secrets: Mapping[str, str] | None = None, revisions: Mapping[str, str] | None = None,
                 cache_dir: Path | None = None, log_path: Path | None = None) -> dict[str, str]:
    """Render one launch entry; return {relative path: text} for its folder. Pure: reads only templates.

    Args:
        paths: folders of the model's weight sources and step outputs by name (the served one is required;
            a `model:` dependency such as Ziya-BLIP2's LLM is looked up here too).
        python: the interpreter of the model's environment (its `bin/` goes first on PATH).
        entry_dir: the absolute folder the files will live in (service units name it).
        bind: listen address; defaults to the host config's `serve.bind` (127.0.0.1).
        secrets: variables for `secrets.env` (MODELRIG_API_KEY, MODELRIG_UI_AUTH); required off loopback.
        revisions: resolved commits by weight source name (from the lock), for the remote-code pin check.

    Raises `LaunchError` when the entry cannot run as planned: a CUDA-only kind on another platform, a missing
    weights path, remote code served by vLLM from an unpinned revision, or a non-loopback bind without auth.
    """
    kind = entry.kind
    spec = launch_kind(kind)
    if entry.name not in [e.name for e in manifest.launch]:
        raise LaunchError(f"{manifest.id}: no launch entry named {entry.name!r}")
    if spec.cuda_only and plan.device != "cuda":
        raise LaunchError(f"{manifest.id}/{entry.name}: {kind} runs only on CUDA hosts; the plan is for "
                          f"{plan.device} (use the openai_api entry instead)")
    if plan.platform not in entry.allowed_platforms:
        raise LaunchError(f"{manifest.id}/{entry.name}: not for {plan.platform} hosts (platforms: "
                          f"{', '.join(sorted(entry.allowed_platforms))})")
    weights_name = served_weights(manifest, entry)
    if weights_name not in paths:
        raise LaunchError(f"{manifest.id}/{entry.name}: no folder for weights {weights_name!r} "
                          f"(known: {', '.join(sorted(paths)) or 'none'})")
    if manifest.trust_remote_code and kind == "vllm_serve":
        unpinned = _hub_sources_pinned(manifest, revisions or {})
        if unpinned:
            raise LaunchError(f"{manifest.id}/{entry.name}: vLLM would run remote code from unpinned revisions "
                              f"({', '.join(unpinned)}); run `modelrig fetch {manifest.id}` first (it records the "
                              "commit each revision resolves to), or pin 40-hex commits in the manifest")
    bind = bind or entry.options.get("bind") or config.serve.bind
    if not isinstance(bind, str) or not is_bind_address(bind):
        raise LaunchError(f"{manifest.id}/{entry.name}: cannot listen on {bind!r}: expected an IP address or a "
                          "hostname")
    if entry.adapter is not None and entry.adapter not in ADAPTERS:
        raise LaunchError(f"{manifest.id}/{entry.name}: unknown adapter {entry.adapter!r}")
    secrets = dict(secrets or {})
    for name in secrets:
        sh_name(name)
    if not is_loopback(bind):
        if spec.loopback_only:
            raise LaunchError(f"{manifest.id}/{entry.name}: {kind} entries have no authentication; keep them on "
                              "127.0.0.1 (put a reverse proxy with auth in front)")
        if spec.auth_var and not secrets.get(spec.auth_var):
            raise LaunchError(f"{manifest.id}/{entry.name}: listening on {bind} needs {spec.auth_var} in the "
                              "secrets")

    python = Path(python)
    env_prefix = python.parent.parent
    port = entry_port(manifest.id, entry, config)
    generation = {k: entry.options.get(k, v) for k, v in GENERATION_KEYS.items()}
    script = spec.script
    context: dict[str, Any] = {
        "model_id": manifest.id,
        "entry_name": entry.name,
        "title": f"{manifest.title} ({entry.name})",
        "kind": kind,
        "adapter": entry.adapter,
        "model_path": str(paths[weights_name]),
        "weights": {name: str(path) for name, path in sorted(paths.items())},
        "device": plan.device,
        "dtype": plan.dtype,
        "quantization": plan.quantization,
        "trust_remote_code": manifest.trust_remote_code,
        "architecture": manifest.architecture,
        "options": dict(entry.options),
        "generation": generation,
        "bind": bind,
        "port": port,
    }
    env = _environment()
    files: dict[str, str] = {}
    if kind == "vllm_serve":
        context.update(
            served_name=entry.options.get("served_model_name", manifest.id),
            max_model_len=int(entry.options.get("max_model_len", 4096)),
            prefix_caching=bool(entry.options.get("enable_prefix_caching", True)),
            vllm_dtype={"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[plan.dtype],
            extra_args=_vllm_args(entry.options),
        )
    if kind == "upstream_script":
        assert entry.upstream is not None
        context.update(upstream=entry.upstream, repo_url=_repo_url(entry.upstream.repo),
                       args=_upstream_args(entry, plan, str(paths[weights_name])))
    files[script] = env.get_template(spec.template).render(**context)

    service = {"model_id": manifest.id, "entry_name": entry.name, "kind": kind, "entry_dir": str(entry_dir)}
    files["start.sh"] = env.get_template("services/start.sh.j2").render(
        **service, env_prefix=str(env_prefix), bind=bind, port=port, device=plan.device,
        cache_dir=str(cache_dir) if cache_dir else "", env_vars=sorted(plan.env.env_vars.items()),
        exec_line=spec.exec_line, auth_var=spec.auth_var, loopback_only=spec.loopback_only)
    unit = unit_name(manifest.id, entry.name)
    label = launchd_label(manifest.id, entry.name)
    files[unit] = env.get_template("services/systemd.service.j2").render(**service, wanted_by="default.target")
    files[f"{label}.plist"] = launchd_plist(label, entry_dir, log_path or entry_dir / f"{entry.name}.log",
                                            user=pwd.getpwuid(os.getuid()).pw_name)
    if secrets:
        files[SECRETS_FILE] = "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(secrets.items()))
    health: dict[str, Any] = {"type": "none"}
    if spec.health_path is not None:
        probe_host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
        path = entry.options.get("health_path", spec.health_path)
        health = {"type": "http", "url": f"http://{_url_host(probe_host)}:{port}{path}",
                  "timeout_s": float(entry.options.get("start_timeout_s", 900))}
    info = {
        "model": manifest.id, "entry": entry.name, "kind": kind, "adapter": entry.adapter, "bind": bind,
        "port": port, "script": script, "start": "start.sh", "health": health, "systemd_unit": unit,
        "launchd_label": label, "launchd_domain": config.serve.launchd_domain, "python": str(python), "device": plan.device, "dtype": plan.dtype,
        "quantization": plan.quantization, "auth": sorted(secrets),
    }
    info["files"] = sorted([*files, ENTRY_FILE])
    files[ENTRY_FILE] = json.dumps(info, indent=2, sort_keys=True) + "\n"
    return files


#: Entry options passed through to `vllm serve` as flags.
VLLM_FLAGS = ("limit_mm_per_prompt", "gpu_memory_utilization", "tensor_parallel_size", "max_num_seqs")


def _vllm_args(options: Mapping[str, Any]) -> list[str]:
    args = []
    for name in VLLM_FLAGS:
        if options.get(name) is not None:
            args += [f"--{name.replace('_', '-')}", str(options[name])]
    if options.get("enforce_eager"):
        args.append("--enforce-eager")
    return args + [str(a) for a in options.get("extra_args", [])]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _repo_url(repo: str) -> str:
    if "://" in repo or repo.startswith(("/", "git@")):
        return repo
    return f"https://github.com/{repo}.git"


def _upstream_args(entry: LaunchEntry, plan: Plan, model_path: str) -> list[str]:
    """Shell words for the upstream script: `{model_path}`, `{host}`/`{bind}`, `{port}` are filled in."""
    words = []
    shell_vars = {"{host}": '"$HOST"', "{bind}": '"$HOST"', "{port}": '"$PORT"'}
    for arg in entry.upstream.args if entry.upstream else []:
        if arg in shell_vars:
            words.append(shell_vars[arg])
            continue
        text = shlex.quote(arg.replace("{model_path}", model_path).replace("{weights}", model_path))
        text = text.replace("{host}", "'\"$HOST\"'").replace("{bind}", "'\"$HOST\"'").replace("{port}", "'\"$PORT\"'")
        words.append(text)
    cpu_flag = entry.options.get("cpu_flag", "--cpu-only")  # Qwen's demos; `cpu_flag: null` for none
    if cpu_flag and plan.device == "cpu":
        words.append(shlex.quote(str(cpu_flag)))
    return words


def _read_secrets(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                parsed = shlex.split(value)
                values[key.strip()] = parsed[0] if parsed else ""
    return values


def entry_secrets(entry: LaunchEntry, entry_dir: Path, *, bind: str,
                  given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secrets an entry runs with: `given` ones, else those already in its secrets.env, else (off loopback)
    a freshly generated API key or UI password, so a non-loopback listener never runs without authentication."""
    values = _read_secrets(entry_dir / SECRETS_FILE)
    values.update({k: v for k, v in (given or {}).items() if v})
    if not is_loopback(bind):
        auth_var = launch_kind(entry.kind).auth_var
        if auth_var == "MODELRIG_API_KEY" and not values.get(auth_var):
            values[auth_var] = "sk-" + _secrets.token_urlsafe(24)
        if auth_var == "MODELRIG_UI_AUTH" and not values.get(auth_var):
            values[auth_var] = "modelrig:" + _secrets.token_urlsafe(12)
    return values


def _mode(name: str) -> int:
    if name == SECRETS_FILE:
        return 0o600
    return 0o755 if name.endswith(".sh") or name == "app.py" else 0o644


def render(manifest: Manifest, plan: Plan, out_dir: Path, *, paths: Mapping[str, Path | str], python: Path | str,
           config: HostConfig | None = None, entries: list[str] | None = None, bind: str | None = None,
           secrets: Mapping[str, str] | None = None, revisions: Mapping[str, str] | None = None,
           cache_dir: Path | None = None, log_dir: Path | None = None, check: bool = False) -> StageResult:
    """Render the plan's launch entries (or `entries`) into `out_dir/<entry>/`; idempotent.

    Files whose content is unchanged are not rewritten, so `changed` is True only when something was written
    or removed; a file edited by hand is put back. `secrets.env` is written with mode 0600; see `entry_secrets`
    for where secrets come from. With `check`, nothing is written: the result says what would be, and why
    (`reasons`). Returns a `StageResult` whose details map each entry to its folder and written files.
    """
    started = time.perf_counter()
    config = config or HostConfig()
    out_dir = Path(out_dir).absolute()
    names = entries if entries is not None else list(plan.launch)
    by_name = {e.name: e for e in manifest.launch}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise LaunchError(f"{manifest.id}: no launch entry {', '.join(map(repr, unknown))} (entries: "
                          f"{', '.join(by_name) or 'none'})")
    claim_out_dir(out_dir, check=check)
    report: dict[str, Any] = {}
    reasons: list[str] = []
    changed = False
    for name in names:
        entry = by_name[name]
        entry_dir = out_dir / name
        entry_bind = bind or entry.options.get("bind") or config.serve.bind
        values = entry_secrets(entry, entry_dir, bind=entry_bind, given=secrets)
        files = render_entry(manifest, entry, plan, paths, config=config, python=python, entry_dir=entry_dir,
                             bind=entry_bind, secrets=values, revisions=revisions, cache_dir=cache_dir,
                             log_path=(log_dir / f"{name}.log") if log_dir else None)
        key = digest(files)
        previous = read_stamp(entry_dir) or {}
        written, removed, why = _differences(entry_dir, files, previous, key)
        reasons.extend(f"{name}: {reason}" for reason in why)
        if not check and (written or removed or previous.get("key") != key):
            for rel in written:
                atomic_write_text(entry_dir / rel, files[rel], mode=_mode(rel))
            for rel in removed:
                (entry_dir / rel).unlink()
            write_stamp(entry_dir, {"key": key, "files": sorted(files)})
        changed = changed or bool(written or removed)
        report[name] = {"dir": str(entry_dir), "written": sorted(written), "removed": removed,
                        "kind": entry.kind, "port": entry_port(manifest.id, entry, config),
                        "bind": entry_bind,
                        "secrets": str(entry_dir / SECRETS_FILE) if values else None}
    rendered = sum(bool(r["written"] or r["removed"]) for r in report.values())
    summary = (f"rendered {rendered} of {len(report)} launch entries into {out_dir}" if rendered
               else f"{len(report)} launch entries unchanged in {out_dir}")
    return StageResult(stage="render", changed=changed, summary=summary, model=manifest.id,
                       seconds=time.perf_counter() - started, details={"entries": report, "out": str(out_dir)},
                       reasons=reasons, check=check)


def _differences(entry_dir: Path, files: Mapping[str, str], previous: Mapping[str, Any],
                 key: str) -> tuple[list[str], list[str], list[str]]:
    """(files to write, files to remove, why) for one entry: compared with what is on disk, not only the stamp,
    so a file edited by hand is found."""
    written: list[str] = []
    why: list[str] = []
    inputs_changed = bool(previous) and previous.get("key") != key
    for rel, text in files.items():
        target = entry_dir / rel
        if not target.is_file():
            written.append(rel)
            why.append(f"{rel} is missing" if previous else f"{rel} not rendered yet")
        elif target.read_text(encoding="utf-8", errors="replace") != text:
            written.append(rel)
            cause = "the manifest, plan, paths or host config changed" if inputs_changed \
                else "edited since it was rendered"
            why.append(f"{rel} differs from its rendering: {cause}")
        elif (target.stat().st_mode & 0o777) != _mode(rel):
            written.append(rel)
            why.append(f"{rel} has mode {target.stat().st_mode & 0o777:o}, not {_mode(rel):o}")
    removed = [rel for rel in previous.get("files", []) if rel not in files and (entry_dir / rel).is_file()]
    why.extend(f"{rel} is no longer rendered" for rel in removed)
    return sorted(written), removed, why
