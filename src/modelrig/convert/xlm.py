"""XLM's original PyTorch checkpoint (`mlm_*.pth`: weights, params, dictionary) to safetensors + config + vocab."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from modelrig.convert.shards import OutputTensor, whole, write_safetensors_shards
from modelrig.convert.step import run_step
from modelrig.errors import ConversionError
from modelrig.result import StageResult


def _load(path: Path) -> dict[str, Any]:
    """The checkpoint, unpickled with torch's weights-only unpickler (the file comes from elsewhere)."""
    try:
        chkpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unpickling failure is a bad input file
        raise ConversionError(f"{path}: not an XLM checkpoint torch can load weights-only ({exc})") from exc
    if not isinstance(chkpt, dict):
        raise ConversionError(f"{path}: an XLM checkpoint is a dict with model, params and dico_word2id")
    for key, kind in (("model", dict), ("params", dict), ("dico_word2id", dict)):
        if not isinstance(chkpt.get(key), kind):
            raise ConversionError(f"{path}: field {key} missing or not a {kind.__name__}")
    for name, value in chkpt["model"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: model entry {name!r} is not a named tensor")
    return chkpt


def plan_xlm(path: Path) -> tuple[list[OutputTensor], dict[str, Any], dict[str, int]]:
    """XLM's tensors renamed as `convert_xlm_original_pytorch_checkpoint_to_pytorch` does (all but the prediction
    layer under `transformer.`), the config from its params, and the vocabulary with BPE end-of-word marks."""
    chkpt = _load(path)
    tensors = []
    for name, value in chkpt["model"].items():
        out = name if "pred_layer" in name else "transformer." + name
        tensors.append(OutputTensor(out, tuple(value.shape), value.dtype,
                                    whole(lambda v=value: v.detach().contiguous())))
    config = {k: v for k, v in chkpt["params"].items() if not isinstance(v, torch.Tensor)}
    config.setdefault("model_type", "xlm")
    config.setdefault("architectures", ["XLMWithLMHeadModel"])
    vocab = {s + "</w>" if s.find("@@") == -1 and i > 13 else s.replace("@@", ""): i
             for s, i in chkpt["dico_word2id"].items()}
    return sorted(tensors, key=lambda t: t.name), config, vocab


def convert_xlm(*, checkpoint: Path, out: Path, cache: Path | None = None, model: str | None = None) -> StageResult:
    """Convert an original XLM checkpoint; no TensorFlow and no conversion env are needed."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConversionError(f"{checkpoint}: not found (give XLM's .pth checkpoint file)")
    state: dict[str, Any] = {}

    def needed() -> int:
        state["tensors"], state["config"], state["vocab"] = plan_xlm(checkpoint)
        return sum(t.nbytes for t in state["tensors"])

    def body(tmp: Path) -> dict[str, Any]:
        files = write_safetensors_shards(state["tensors"], tmp, max_shard_size="5GB", desc="xlm")
        for name, value in (("config.json", state["config"]), ("vocab.json", state["vocab"])):
            try:
                text = json.dumps(value, indent=2, sort_keys=True) + "\n"
            except TypeError as exc:
                raise ConversionError(f"{checkpoint}: field {name.split('.')[0]} is not JSON ({exc})") from exc
            (tmp / name).write_text(text, encoding="utf-8")
            files[name] = hashlib.sha256(text.encode()).hexdigest()
        return {"model_type": "xlm", "files": files, "tensors": len(state["tensors"]),
                "summary": f"tf (xlm): {len(state['tensors'])} tensors -> {out}"}

    return run_step("tf", out=Path(out), params={"model_type": "xlm", "format": "xlm"}, sources={"ckpt": checkpoint},
                    needed_bytes=needed, body=body, cache=cache, model=model)
