"""`modelrig doctor [MODEL]`: what a user checks first on a new rented server or Mac, one line per check.

Each check is OK, WARN or FAIL with the fix for anything not OK: Python and uv, free disk on the data root (and
AutoDL's data disk), loopback, the hubs and package indexes this host would use (probed concurrently with short
timeouts, through the `*_proxy` settings like the clients), GPUs and driver or Apple chip and MPS (from
`modelrig.facts`), the init system, proxy settings, tokens (whether set, never their value), and for a model
whether this host can run it (the planner's verdict and what would work).

For a recorded host (`--from-dir DIR` of command outputs, or `--facts FILE`) only the checks that the recorded
facts answer are made; the live ones (Python, network, proxy, tokens, init system) describe a running host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelrig.config import AUTODL_DATA_DISK, Context
from modelrig.facts import HostFacts
from modelrig.humansize import format_memory, format_size
from modelrig.netcheck import LOOPBACK_HINT, MIRROR_HINT, is_loopback, loopback_up
from modelrig.plan import Plan

Status = Literal["ok", "warn", "fail"]
#: Seconds each network probe may take; all probes run at once, so the whole check takes about this long.
PROBE_TIMEOUT = 3.0
#: Free disk below which the data root is a FAIL (the demo's env, weights and outputs) and a WARN (a real model).
DISK_FAIL_BYTES = int(2.5e9)
DISK_WARN_BYTES = int(30e9)
PYPI_SIMPLE = "https://pypi.org/simple/"
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
#: AutoDL's "academic acceleration": sourcing it sets http(s)_proxy for GitHub and Hugging Face.
AUTODL_TURBO = Path("/etc/network_turbo")
TOOLKIT_PYTHON_MIN = (3, 10)
DEMO_PYTHON = "3.11"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its status, what was found, and the fix when not OK."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """`OK    python    3.11.7 ...` (with `-> fix` when there is one)."""
        text = f"{self.status.upper():<5} {self.name:<12} {self.detail}"
        return text + (f"\n{'':<19}fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix or None,
                "data": self.data}


@dataclass(frozen=True)
class Endpoint:
    """A URL this host would download from, and what to change when it does not answer."""

    name: str
    url: str
    fix: str
    #: FAIL when it does not answer (else WARN: something else covers for it).
    required: bool = True


@dataclass(frozen=True)
class ProbeResult:
    """An HTTP request's outcome: any HTTP answer (even 404) means reachable."""

    ok: bool
    seconds: float
    error: str = ""
    via_proxy: bool = False


def probe(url: str, *, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """A HEAD request to `url` through the proxy settings (as pip and the hub clients use them); never raises.

    A `file:` URL is reachable when its folder exists.
    """
    parts = urllib.parse.urlparse(url)
    start = time.perf_counter()
    if parts.scheme == "file":
        exists = Path(urllib.parse.unquote(parts.path)).exists()
        return ProbeResult(exists, time.perf_counter() - start, "" if exists else "no such folder")
    proxies = urllib.request.getproxies()
    via = bool(proxies.get(parts.scheme)) and not urllib.request.proxy_bypass(parts.hostname or "")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        text = str(getattr(reason, "strerror", None) or reason)
        if "timed out" in text.lower() or isinstance(reason, TimeoutError):
            text = f"timed out after {timeout:g}s"
        return ProbeResult(False, time.perf_counter() - start, text.lower(), via)
    return ProbeResult(True, time.perf_counter() - start, "", via)


def endpoints(ctx: Context, torch_index_url: str | None, environ: Mapping[str, str]) -> list[Endpoint]:
    """The hubs and indexes this host would use, from the host config and the environment (as fetch and env)."""
    from modelrig.envs.build import torch_index_hint
    from modelrig.fetch.remote import endpoints_for

    hubs = endpoints_for(ctx.config)
    config_file = ctx.data.config_file
    pip_index = ctx.config.pip.index_url or environ.get("PIP_INDEX_URL") or PYPI_SIMPLE
    found = [
        Endpoint("hf hub", hubs.huggingface, MIRROR_HINT, required=False),
        Endpoint("modelscope", hubs.modelscope, "set hub.modelscope_endpoint in the host config, or use the "
                 "Hugging Face Hub or a mirror of it (hub.hf_endpoint)", required=False),
        Endpoint("pip index", pip_index, f"set pip.index_url in {config_file} to a reachable PyPI mirror (e.g. "
                 "https://pypi.tuna.tsinghua.edu.cn/simple), or build envs from a warm uv cache: "
                 "`modelrig demo --offline`, `modelrig up MODEL --offline`"),
    ]
    if torch_index_url:
        found.append(Endpoint("torch index", torch_index_url, torch_index_hint(torch_index_url,
                                                                              config_file=config_file)))
    return found


def network_checks(targets: list[Endpoint], *, timeout: float = PROBE_TIMEOUT) -> list[Check]:
    """Probe every endpoint at once; hubs are FAIL only when no hub answers (fetch falls back between them)."""
    if not loopback_up():
        loop = Check("loopback", "fail", "127.0.0.1 does not answer", LOOPBACK_HINT)
    else:
        loop = Check("loopback", "ok", "127.0.0.1 answers (local hub, demos)")
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = list(pool.map(lambda t: probe(t.url, timeout=timeout), targets))
    any_hub = any(r.ok for t, r in zip(targets, results, strict=True) if not t.required)
    checks = [loop]
    for target, result in zip(targets, results, strict=True):
        data = {"url": target.url, "reachable": result.ok, "seconds": round(result.seconds, 3),
                "via_proxy": result.via_proxy}
        proxy = " via proxy" if result.via_proxy else ""
        if result.ok:
            checks.append(Check(target.name, "ok", f"{target.url} answers in {result.seconds * 1000:.0f} ms{proxy}",
                                data=data))
            continue
        status: Status = "fail" if target.required or not any_hub else "warn"
        host = urllib.parse.urlparse(target.url).hostname
        fix = LOOPBACK_HINT if is_loopback(host) and not loopback_up() else target.fix
        if not target.required and any_hub:
            fix = f"the other hub answers, so fetch falls back to it; or {fix}"
        checks.append(Check(target.name, status, f"{target.url} unreachable{proxy}: {result.error}", fix,
                            data=data | {"error": result.error}))
    return checks


def python_checks(manifest_python: str | None) -> list[Check]:
    """The toolkit's Python (3.10+), uv, and the interpreter a model env (or the demo's env) is built from."""
    from modelrig.envs.tools import find_python, find_uv

    version = ".".join(map(str, sys.version_info[:3]))
    checks = [Check("python", "ok" if sys.version_info[:2] >= TOOLKIT_PYTHON_MIN else "fail",
                    f"toolkit Python {version} ({sys.executable})",
                    "" if sys.version_info[:2] >= TOOLKIT_PYTHON_MIN else "the toolkit needs Python 3.10 or later")]
    uv = find_uv()
    if uv:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
        checks.append(Check("uv", "ok", f"{out.strip() or 'uv'} ({uv})", data={"path": uv}))
    else:
        checks.append(Check("uv", "warn", "uv not found: model envs are built with pip (slower, no shared cache)",
                            "pip install uv (or `make setup`, which installs it in the toolkit env)"))
    wanted = manifest_python or DEMO_PYTHON
    what = "the model env" if manifest_python else "the demo env"
    from modelrig.errors import EnvBuildError

    try:
        interp, _warnings = find_python(wanted)
        checks.append(Check("env python", "ok", f"Python {interp.version} for {what} ({interp.path})"))
    except EnvBuildError:
        checks.append(Check("env python", "fail" if manifest_python else "warn", f"no Python {wanted} for {what}",
                            f"`uv python install {wanted}` (or pyenv, or your OS's python{wanted} package)"))
    return checks


def disk_checks(facts: HostFacts, *, data_root: Path, autodl_disk: Path | None = AUTODL_DATA_DISK) -> list[Check]:
    """Free disk on the data root, and on AutoDL's data disk when this host has one (None: not this machine's)."""
    free = facts.disk_free_bytes
    data = {"path": str(data_root), "free_bytes": free}
    if not free:
        checks = [Check("disk", "warn", f"free space at {data_root} unknown", data=data)]
    elif free < DISK_FAIL_BYTES:
        checks = [Check("disk", "fail", f"{format_size(free)} free at {data_root}",
                        f"the demo needs about {format_size(DISK_FAIL_BYTES)}: free space, or point MODELRIG_HOME "
                        "(or --data-root) at a bigger disk", data)]
    elif free < DISK_WARN_BYTES:
        checks = [Check("disk", "warn", f"{format_size(free)} free at {data_root}: enough for the demo, not for "
                        "most real models (a 13B model needs about 120 GB with its conversions)",
                        "point MODELRIG_HOME (or --data-root) at a bigger disk for real models", data)]
    else:
        checks = [Check("disk", "ok", f"{format_size(free)} free at {data_root}", data=data)]
    if autodl_disk is not None and autodl_disk.is_dir():
        on_it = data_root == autodl_disk or autodl_disk in data_root.parents
        usage = shutil.disk_usage(autodl_disk)
        checks.append(Check("autodl disk", "ok" if on_it else "warn",
                            f"{format_size(usage.free)} free on AutoDL's data disk {autodl_disk}"
                            + ("" if on_it else f"; the data root {data_root} is on the small system disk"),
                            "" if on_it else f"export MODELRIG_HOME={autodl_disk}/modelrig",
                            {"path": str(autodl_disk), "free_bytes": usage.free}))
    return checks


def accelerator_checks(facts: HostFacts) -> list[Check]:
    """NVIDIA driver, CUDA and GPUs, or the Apple chip and MPS, or CPU only; the facts' warnings as WARN."""
    checks: list[Check] = []
    if facts.gpus:
        names = sorted({g.name for g in facts.gpus})
        memory = sum(g.memory_mib for g in facts.gpus) * 2**20
        checks.append(Check("gpus", "ok", f"{len(facts.gpus)}x {', '.join(names)} ({format_size(memory)} in all)",
                            data={"gpus": [g.name for g in facts.gpus]}))
        cuda = facts.cuda_driver_max
        checks.append(Check("driver", "ok" if cuda else "warn",
                            f"NVIDIA driver {facts.driver_version or 'unknown'}, CUDA {cuda or 'unknown'} at most",
                            "" if cuda else "run nvidia-smi to see the driver; the planner assumes the newest CUDA"))
    elif facts.apple_chip:
        mps = facts.mps_available
        checks.append(Check("apple", "ok" if mps else "warn",
                            f"{facts.apple_chip}, {format_memory(facts.unified_memory_bytes or facts.ram_bytes)} "
                            f"unified memory, MPS {'available' if mps else 'not available'}",
                            "" if mps else "MPS needs macOS 12.3 or later on Apple Silicon"))
    else:
        checks.append(Check("gpus", "ok", f"none: CPU only ({format_memory(facts.ram_bytes)} RAM); the demo and "
                            "small models run, large ones need a GPU or a Mac"))
    checks += [Check("facts", "warn", warning) for warning in facts.warnings]
    return checks


def system_checks(environ: Mapping[str, str], *, config_token_file: str | None,
                  turbo: Path = AUTODL_TURBO) -> list[Check]:
    """Init system, proxy settings (names and hosts only) and whether hub tokens are set (never their values)."""
    from modelrig.launch import detect_supervisor

    supervisor = detect_supervisor()
    init = {"systemd": "systemd is init: demos run as systemd units",
            "launchd": "macOS: demos run as launchd jobs (LaunchDaemons unless serve.launchd_domain is gui)"}.get(
        supervisor, "no systemd (a container?): demos run as supervised background processes")
    checks = [Check("init", "ok", init, data={"supervisor": supervisor})]
    proxies = {}
    for name in PROXY_VARS:
        value = environ.get(name) or environ.get(name.upper())
        if value:
            parts = urllib.parse.urlparse(value if "://" in value or name == "no_proxy" else f"http://{value}")
            proxies[name] = value if name == "no_proxy" else f"{parts.scheme}://{parts.hostname}" + (
                f":{parts.port}" if parts.port else "")
    shown = ", ".join(f"{k}={v}" for k, v in proxies.items()) or "none"
    if turbo.is_file() and not proxies:
        checks.append(Check("proxy", "warn", f"AutoDL's {turbo} exists but no proxy is set",
                            f"`source {turbo}` speeds up GitHub and Hugging Face (unset http_proxy https_proxy "
                            "again for China mirrors)", {"proxies": proxies}))
    else:
        checks.append(Check("proxy", "ok", f"proxy settings: {shown}", data={"proxies": proxies}))
    tokens = [name for name in TOKEN_VARS if environ.get(name)]
    token_file = Path(config_token_file).expanduser() if config_token_file else None
    if token_file is not None and token_file.is_file():
        tokens.append(f"hub.token_file ({token_file})")
    checks.append(Check("tokens", "ok", f"set: {', '.join(tokens)}" if tokens else "no hub token set (needed "
                        "only for gated repos: HF_TOKEN, MODELSCOPE_API_TOKEN or hub.token_file)",
                        data={"set": tokens}))
    return checks


def verdict(plan: Plan) -> str:
    """The plan's result in one line (`modelrig -q plan`): whether it fits, and the torch build, precision and
    sizes it chose; the reason it does not fit follows as the error line."""
    if not plan.fits:
        return f"{plan.model}: does not fit this host"
    torch = plan.env.torch
    precision = f"{plan.quantization} ({plan.dtype})" if plan.quantization else plan.dtype
    return (f"{plan.model}: fits, {plan.platform}, torch {torch.version or '-'} [{torch.variant}], {precision}, "
            f"download {format_size(plan.download_bytes)}, disk {format_size(plan.disk_needed_bytes)} of "
            f"{format_size(plan.disk_free_bytes)} free")


def model_check(model: str, facts: HostFacts, ctx: Context,
                environ: Mapping[str, str]) -> tuple[list[Check], Plan]:
    """Whether this host can run `model`: the planner's verdict, and a gated repo without a token; returns the
    checks and the plan (None when the manifest cannot be planned)."""
    from modelrig.catalog import load_model
    from modelrig.plan import plan_model

    manifest = load_model(model)
    plan = plan_model(manifest, ctx, facts=facts, refuse=False)
    checks = []
    if plan.fits:
        checks.append(Check("model", "ok", verdict(plan), data={"model": manifest.id, "fits": True}))
    else:
        checks.append(Check("model", "fail", f"{manifest.id} cannot run on this host", plan.refusal or "",
                            {"model": manifest.id, "fits": False}))
    checks += [Check("plan", "warn", warning) for warning in plan.warnings]
    from modelrig.orchestrate.demo import DEMO_MODEL

    # The demo's own hub hands its gated tiny repo the token it made; every other gated repo needs the user's.
    gated = [name for name, source in manifest.weights.items() if getattr(source, "gated", False)
             and manifest.id != DEMO_MODEL]
    if gated and not (any(environ.get(v) for v in TOKEN_VARS) or ctx.config.hub.token_file):
        checks.append(Check("model token", "warn", f"{manifest.id}: gated weights ({', '.join(gated)}) and no token",
                            "request access on the hub, then set HF_TOKEN (or hub.token_file in the host config)"))
    return checks, plan


def run_checks(
    ctx: Context,
    *,
    model: str | None = None,
    facts: HostFacts | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = PROBE_TIMEOUT,
    collect_facts: Callable[[Path], HostFacts] | None = None,
) -> list[Check]:
    """Every check, in report order. `facts` given means a recorded host: only the fact-based checks run."""
    environ = os.environ if environ is None else environ
    recorded = facts is not None
    if facts is None:
        from modelrig.facts.collect import collect

        facts = (collect_facts or collect)(ctx.data.root)
    checks: list[Check] = []
    plan = None
    model_checks: list[Check] = []
    if model:
        model_checks, plan = model_check(model, facts, ctx, environ)
    if not recorded:
        manifest_python = plan.env.python if plan is not None else None
        checks += python_checks(manifest_python)
    if recorded:  # the recorded host's data root and free space; this machine's disks are not its
        checks += disk_checks(facts, data_root=Path(facts.data_root or "the recorded data root"), autodl_disk=None)
    else:
        checks += disk_checks(facts, data_root=ctx.data.root)
    checks += accelerator_checks(facts)
    if not recorded:
        torch_index = plan.env.torch.index_url if plan is not None else _default_torch_index(ctx, facts)
        checks += network_checks(endpoints(ctx, torch_index, environ), timeout=timeout)
        checks += system_checks(environ, config_token_file=ctx.config.hub.token_file)
    return checks + model_checks


def _default_torch_index(ctx: Context, facts: HostFacts) -> str | None:
    """The torch index a model env would use here without a model to plan: the CPU one on CPU-only Linux, the
    base of the CUDA ones on NVIDIA hosts (PyPI's default wheels on macOS)."""
    pip = ctx.config.pip
    if not pip.use_torch_index or facts.os == "darwin":
        return None
    return f"{pip.torch_index_base.rstrip('/')}/" + ("cpu" if not facts.gpus else "")


def worst(checks: list[Check]) -> Status:
    """The most severe status of the checks."""
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
