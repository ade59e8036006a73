"""`modelrig convert safetensors`: pickles to verified safetensors shards, tied weights, refusing unsafe pickles."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modelrig.convert.readers import ModelReader
from modelrig.convert.safetensors_convert import convert_to_safetensors
from modelrig.errors import ConversionError
from modelrig.hub import tiny


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _all_tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_sharded_bin_converts_to_safetensors_shards_with_index_and_equal_tensors(tmp_path, cli):
    base = tiny.write_llama_hf(tmp_path / "base")
    tiny.write_ziya_delta(base, tmp_path / "delta")
    source: dict[str, torch.Tensor] = {}
    for f in sorted((tmp_path / "delta").glob("*.bin")):
        source.update(torch.load(f, weights_only=True))
    code, out, err = cli("convert", "safetensors", "--input", tmp_path / "delta", "--out", tmp_path / "st",
                         "--max-shard-size", "100KB", "--json")
    assert code == 0, err
    files = json.loads(out)["details"]["files"]
    index = json.loads((tmp_path / "st" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "st").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards) and set(shards) <= set(files)
    got = _all_tensors(tmp_path / "st")
    assert set(got) == set(source) == set(index["weight_map"])
    assert all(torch.equal(got[k], v) for k, v in source.items())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in source.values())
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "added_tokens.json"):
        assert (tmp_path / "st" / name).is_file()
    for shard in shards:
        with safe_open(str(tmp_path / "st" / shard), framework="pt") as f:
            assert f.metadata()["format"] == "pt"


def test_tied_weights_are_stored_once_and_still_load_in_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    base = tiny.write_llama_hf(tmp_path / "base")
    state = load_file(str(base / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # one storage, two names
    src = tmp_path / "tied"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")
    config = json.loads((base / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    result = convert_to_safetensors(source=src, out=tmp_path / "st")
    assert result.details["aliases_dropped"] == {"lm_head.weight": "model.embed_tokens.weight"}
    with safe_open(str(tmp_path / "st" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.metadata()["lm_head.weight"] == "model.embed_tokens.weight"
    model = LlamaForCausalLM.from_pretrained(str(tmp_path / "st"), torch_dtype=torch.float16)
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


def test_views_of_one_storage_that_are_different_tensors_are_all_kept(tmp_path):
    meta = tiny.write_llama_meta(tmp_path / "meta")
    original = torch.load(meta / "consolidated.00.pth", weights_only=True)
    convert_to_safetensors(source=meta / "consolidated.00.pth", out=tmp_path / "st")
    got = _all_tensors(tmp_path / "st")
    assert set(got) == set(original)
    assert all(torch.equal(got[k], v) for k, v in original.items())


def test_malicious_pickle_is_refused_without_running_it(tmp_path, cli):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil"
    src.mkdir()
    torch.save({"weight": torch.ones(2), "payload": _RunsCode(marker)}, src / "pytorch_model.bin")
    code, _, err = cli("convert", "safetensors", "--input", src, "--out", tmp_path / "st")
    assert code == 6
    assert "pytorch_model.bin" in err and "refusing to unpickle" in err and "--allow-unsafe-pickle" in err
    assert not marker.exists()
    assert not (tmp_path / "st").exists()


def test_allow_unsafe_pickle_converts_a_trusted_pickle_and_says_so_loudly(tmp_path, cli):
    src = tmp_path / "old"
    src.mkdir()
    torch.save({"weight": torch.arange(6.0).reshape(2, 3), "args": argparse.Namespace(lr=1.0)},
               src / "pytorch_model.bin")
    code, _, err = cli("convert", "safetensors", "--input", src, "--out", tmp_path / "refused")
    assert code == 6 and "refusing to unpickle" in err
    code, _, err = cli("convert", "safetensors", "--input", src, "--out", tmp_path / "st", "--allow-unsafe-pickle")
    assert code == 0, err
    assert "warning: --allow-unsafe-pickle" in err
    assert torch.equal(_all_tensors(tmp_path / "st")["weight"], torch.arange(6.0).reshape(2, 3))


def test_corrupt_bin_is_a_clear_error(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    torch.save({"w": torch.ones(1000)}, src / "pytorch_model.bin")
    data = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(ConversionError, match=r"pytorch_model\.bin"):
        convert_to_safetensors(source=src, out=tmp_path / "st")


def test_conversion_is_deterministic_and_idempotent(tmp_path):
    base = tiny.write_llama_hf(tmp_path / "base")
    tiny.write_ziya_delta(base, tmp_path / "delta")
    first = convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "a")
    second = convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "a")
    convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "b")
    assert first.changed and not second.changed
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert len(ModelReader.open(tmp_path / "a").tensors) == len(ModelReader.open(tmp_path / "delta").tensors)


def test_kernel_copied_spans_and_the_buffered_fallback_write_the_same_bytes_and_digests(tmp_path, monkeypatch):
    from modelrig.convert import io
    from modelrig.stamp import sha256_file

    base = tiny.write_llama_hf(tmp_path / "base")
    tiny.write_ziya_delta(base, tmp_path / "delta")
    copied = []
    real = os.copy_file_range

    def counting(*args):
        copied.append(real(*args))
        return copied[-1]

    monkeypatch.setattr(os, "copy_file_range", counting)
    kernel = convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "kernel", max_shard_size="100KB")
    index = json.loads((tmp_path / "kernel" / "model.safetensors.index.json").read_text())
    assert sum(copied) == index["metadata"]["total_size"]
    monkeypatch.setattr(io, "_COPY_RANGE", False)
    buffered = convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "buffered", max_shard_size="100KB")
    assert kernel.details["files"] == buffered.details["files"]
    for name, digest in kernel.details["files"].items():
        assert sha256_file(tmp_path / "kernel" / name) == digest
        assert (tmp_path / "kernel" / name).read_bytes() == (tmp_path / "buffered" / name).read_bytes()


def test_not_enough_disk_is_refused_before_anything_is_written(tmp_path, cli, monkeypatch):
    import shutil
    from collections import namedtuple

    base = tiny.write_llama_hf(tmp_path / "base")
    tiny.write_ziya_delta(base, tmp_path / "delta")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code, _, err = cli("convert", "safetensors", "--input", tmp_path / "delta", "--out", tmp_path / "st")
    assert code == 4
    assert "needs" in err and "free for the output" in err
    assert not (tmp_path / "st").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".modelrig-tmp")]


def test_shards_are_written_back_while_written_and_fsynced_beside_the_next_one(tmp_path, monkeypatch):
    """Durability overlapped with the writing: the kernel is asked to start writeback of each stretch as soon as it
    is written (so the fsync at the end waits for the tail only), and every shard is fsynced off the writing
    thread, each before the step returns."""
    import threading

    from modelrig.convert import io, shards

    base = tiny.write_llama_hf(tmp_path / "base")
    tiny.write_ziya_delta(base, tmp_path / "delta")
    kicks: list[tuple[str, int, int]] = []
    real = io._SYNC_FILE_RANGE

    def recording(fd: int, offset: int, nbytes: int, flags: int) -> int:
        kicks.append((os.readlink(f"/proc/self/fd/{fd}"), offset, nbytes))
        return real(fd, offset, nbytes, flags) if real else 0

    synced: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))
        real_fsync(fd)

    monkeypatch.setattr(io, "_SYNC_FILE_RANGE", recording)
    monkeypatch.setattr(io, "WRITEBACK_BYTES", 16 << 10)
    monkeypatch.setattr(shards, "WRITEBACK_BYTES", 16 << 10)
    monkeypatch.setattr(shards.os, "fsync", fsync)
    convert_to_safetensors(source=tmp_path / "delta", out=tmp_path / "st", max_shard_size="100KB")
    written = sorted(p.name for p in (tmp_path / "st").glob("model-*-of-*.safetensors"))
    assert len(written) > 1
    for name in written:
        spans = sorted((o, n) for path, o, n in kicks if Path(path).name == name)
        if (tmp_path / "st" / name).stat().st_size > 64 << 10:
            assert len(spans) > 1, name  # more than one stretch started before the end
        assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, in order
        syncs = [thread for path, thread in synced if Path(path).name == name]
        assert len(syncs) == 1 and syncs[0] != threading.main_thread().name
