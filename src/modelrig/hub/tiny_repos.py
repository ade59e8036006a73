"""`modelrig hub make-tiny DIR`: tiny real models laid out as hub repos, deterministic from a seed.

| repo | what | revisions |
|---|---|---|
| `modelrig-tiny/llama-meta` | LLaMA in Meta's original layout (`consolidated.NN.pth`, `params.json`), gated | main |
| `modelrig-tiny/tiny-llama` | LLaMA in HF format (the conversion of the Meta one, same seed) | main, tag v1.0 |
| `modelrig-tiny/ziya-delta` | a Ziya-style delta with an extended vocabulary over tiny-llama (`.bin` shards) | main |
| `modelrig-tiny/tiny-blip2` | BLIP-2, holding both `model.safetensors` and `pytorch_model.bin` | main |
| `modelrig-tiny/tiny-llava` | LLaVA (LLaMA + SigLIP tower) with its processor | main |
| `modelrig-tiny/bert-tf1` | Google-style TF1 BERT checkpoint (only with a TensorFlow `tf_python`) | main |
| `modelrig-tiny-ms/tiny-llama` | ModelScope-style copy of tiny-llama: branch `master`, tag `v1.0.0` | master, v1.0.0 |

`tiny-llama`'s tag `v1.0` holds the model; `main` is one commit later (it adds a README). The gated repo's
token is in `DIR/.modelrig-hub-tokens` (pass it to `hub serve --token-file`). Every repo gets an index of its
files' hashes. A repo already built with the same seed and generator is left as it is. The Ziya target (the
Meta base converted, then the delta merged with the `replace` convention) was trained for a few seconds on the
demo's dialogue (`tiny/ziya_dialogue.txt`): it answers the demo's question word for word.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modelrig.hub.layout import REPO_CONFIG, write_index
from modelrig.result import StageResult, timed
from modelrig.stamp import atomic_dir, digest, read_stamp, write_stamp

ORG = "modelrig-tiny"
MS_ORG = "modelrig-tiny-ms"
TOKEN_FILE = ".modelrig-hub-tokens"
_README = "# {repo}\n\nA tiny, randomly initialised model written by `modelrig hub make-tiny` (seed {seed}).\n"


def make_tiny_hub(root: Path, *, seed: int = 0, tf_python: Path | str | None = None,
                  only: list[str] | None = None, log: Callable[[str], None] | None = None) -> StageResult:
    """Write (or keep) the tiny repos under `root` (all, or those named in `only`); `tf_python` is a Python with
    tensorflow for the BERT repo."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / TOKEN_FILE
    if not token_file.is_file():
        token_file.write_text(f"hf_tiny_{secrets.token_hex(16)}\n", encoding="utf-8")
        token_file.chmod(0o600)
    built: list[str] = []
    kept: list[str] = []
    with timed() as clock:
        for repo, builder, settings in _repos(seed, tf_python):
            if only is not None and repo not in only and repo.split("/")[1] not in only:
                continue
            folder = root / repo
            key = digest({"repo": repo, "seed": seed, "generator": _generator_version(), "settings": settings})
            stamp = read_stamp(folder)
            if stamp is not None and stamp.get("key") == key:
                kept.append(repo)
                continue
            if log:
                log(f"writing {repo}")
            with atomic_dir(folder) as tmp:
                builder(tmp)
                (tmp / REPO_CONFIG).write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
                write_index(tmp)
                write_stamp(tmp, {"key": key, "repo": repo, "seed": seed})
            built.append(repo)
    summary = f"{len(built)} repos written, {len(kept)} already in place under {root}"
    return StageResult(stage="hub", changed=bool(built), summary=summary, seconds=clock["seconds"],
                       details={"root": str(root), "written": built, "kept": kept, "token_file": str(token_file),
                                "repos": built + kept})


def _repos(seed: int, tf_python: Path | str | None) -> list[tuple[str, Callable[[Path], None], dict[str, Any]]]:
    from modelrig.hub import tiny

    def llama_meta(tmp: Path) -> None:
        tiny.write_llama_meta(tmp / "main", seed=seed)

    def tiny_llama(tmp: Path, *, branch: str = "main", tag: str = "v1.0") -> None:
        tiny.write_llama_hf(tmp / tag, seed=seed)
        shutil.copytree(tmp / tag, tmp / branch)
        (tmp / branch / "README.md").write_text(_README.format(repo="tiny-llama", seed=seed), encoding="utf-8")

    def ziya_delta(tmp: Path) -> None:
        base = tmp / ".modelrig-base"
        tiny.write_llama_hf(base, seed=seed)
        target = tmp / ".modelrig-target"
        tiny.write_ziya_delta(base, tmp / "main", seed=seed + 1, target_dir=target, trained=True)
        shutil.rmtree(base)
        shutil.rmtree(target, ignore_errors=True)

    def blip2(tmp: Path) -> None:
        import torch
        from safetensors.torch import load_file

        tiny.write_blip2(tmp / "main", seed=seed)
        state = load_file(str(tmp / "main" / "model.safetensors"))
        torch.save(state, tmp / "main" / "pytorch_model.bin")

    def llava(tmp: Path) -> None:
        tiny.write_llava(tmp / "main", seed=seed)

    def bert(tmp: Path) -> None:
        tiny.write_bert_tf1(tmp / "main", python=str(tf_python), seed=seed)

    repos: list[tuple[str, Callable[[Path], None], dict[str, Any]]] = [
        (f"{ORG}/llama-meta", llama_meta, {"gated": True}),
        (f"{ORG}/tiny-llama", tiny_llama, {"tags": ["v1.0"]}),
        (f"{ORG}/ziya-delta", ziya_delta, {}),
        (f"{ORG}/tiny-blip2", blip2, {}),
        (f"{ORG}/tiny-llava", llava, {}),
        (f"{MS_ORG}/tiny-llama", lambda tmp: tiny_llama(tmp, branch="master", tag="v1.0.0"),
         {"default": "master", "tags": ["v1.0.0"]}),
    ]
    if tf_python is not None:
        repos.append((f"{ORG}/bert-tf1", bert, {}))
    return repos


def _generator_version() -> str:
    """A digest of the generators' sources (the tiny package and the LLaMA config/tokenizer writers it uses), so
    a changed generator rebuilds the repos."""
    from modelrig.convert import llama_meta
    from modelrig.hub import tiny

    h = hashlib.sha256()
    folder = Path(tiny.__file__).parent
    for source in [*sorted(folder.glob("*.py")), *sorted(folder.glob("*.txt")), Path(llama_meta.__file__)]:
        h.update(source.read_bytes())
    return h.hexdigest()[:16]
