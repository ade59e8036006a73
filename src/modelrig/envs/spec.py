"""The resolved spec of a model environment and its digest (pure: no I/O)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement

from modelrig.plan import EnvPlan
from modelrig.stamp import digest

Backend = Literal["venv", "conda"]
#: Length of the hex digest used as the env directory name.
KEY_LENGTH = 16


def resolved_spec(env: EnvPlan, *, backend: Backend, python_version: str) -> dict[str, Any]:
    """Everything that decides an env's contents: the plan's env, the backend and the exact interpreter version.

    `python_version` is the interpreter's full version ("3.11.7"): a patch upgrade of the base interpreter gives
    a new env rather than silently reusing one built against another interpreter. Where torch is downloaded from
    (the PyTorch variant index, a mirror, a local wheel folder) is left out: the same version, variant and
    requirements are the same build, so `modelrig demo` (local wheels when pip's configuration has them) and a
    later `modelrig up` of the same model on the same host share one env, and adding a mirror to the host config
    rebuilds nothing.
    """
    plan = asdict(env)
    plan["torch"].pop("index_url", None)
    return {"backend": backend, "python_version": python_version, "plan": plan}


def env_key(spec: dict[str, Any]) -> str:
    """The env directory name: a short digest of the resolved spec (identical specs share one env)."""
    return digest(spec)[:KEY_LENGTH]


def requirement_name(requirement: str) -> str | None:
    """The normalised project name of a requirement string, or None when it is not a requirement."""
    try:
        return Requirement(requirement).name.lower().replace("_", "-")
    except InvalidRequirement:
        return None


def tokenizers_requirement(tokenizers: dict[str, Any] | None) -> str | None:
    """The requirement that installs tokenizers as the manifest asks, or None when the packages decide alone.

    A wheel with a version gives `tokenizers<version spec>`; a git source gives a direct reference to the Python
    bindings at the pinned ref (built with Rust and maturin).
    """
    if not tokenizers:
        return None
    if tokenizers.get("source") == "git":
        repo = str(tokenizers["repo"])
        url = repo if repo.startswith("git+") else f"git+{repo}"
        return f"tokenizers @ {url}@{tokenizers['ref']}#subdirectory=bindings/python"
    version = tokenizers.get("version")
    return f"tokenizers{version}" if version else None


def package_requirements(env: EnvPlan) -> list[str]:
    """The plan's packages with the tokenizers requirement applied (it replaces any tokenizers pin in `packages`)."""
    tok = tokenizers_requirement(env.tokenizers)
    if tok is None:
        return list(env.packages)
    kept = [p for p in env.packages if requirement_name(p) != "tokenizers"]
    return [*kept, tok]
