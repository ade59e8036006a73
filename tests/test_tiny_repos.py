"""`modelrig hub make-tiny`: tiny real models as hub repos, shaped like the seed pipelines, stable from a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelrig.hub.layout import REPO_CONFIG, REPO_INDEX, list_repos, open_repo, resolve_revision
from modelrig.hub.tiny_repos import MS_ORG, ORG, TOKEN_FILE, make_tiny_hub
from tests.helpers.venvs import TF_CONVERT


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-hub")
    make_tiny_hub(root, seed=0)
    return root


def _indexes(root: Path) -> dict[str, str]:
    return {repo: (root / repo / REPO_INDEX).read_text() for repo in list_repos(root)}


def test_make_tiny_writes_every_seed_pipeline_shape(tiny_hub: Path) -> None:
    assert list_repos(tiny_hub) == sorted([f"{ORG}/llama-meta", f"{ORG}/tiny-llama", f"{ORG}/ziya-delta",
                                           f"{ORG}/tiny-blip2", f"{ORG}/tiny-llava", f"{MS_ORG}/tiny-llama"])
    meta = tiny_hub / ORG / "llama-meta" / "main"
    assert sorted(p.name for p in meta.iterdir()) == ["consolidated.00.pth", "consolidated.01.pth", "params.json",
                                                      "tokenizer.model"]
    delta = tiny_hub / ORG / "ziya-delta" / "main"
    index = json.loads((delta / "pytorch_model.bin.index.json").read_text())
    assert all((delta / shard).is_file() for shard in set(index["weight_map"].values()))
    delta_vocab = json.loads((delta / "config.json").read_text())["vocab_size"]
    base_vocab = json.loads((tiny_hub / ORG / "tiny-llama" / "main" / "config.json").read_text())["vocab_size"]
    assert delta_vocab > base_vocab  # the Ziya convention: an extended, padded vocabulary
    blip2 = tiny_hub / ORG / "tiny-blip2" / "main"
    assert (blip2 / "model.safetensors").is_file() and (blip2 / "pytorch_model.bin").is_file()
    assert json.loads((tiny_hub / ORG / "tiny-llava" / "main" / "config.json").read_text())["model_type"] == "llava"


def test_revisions_gated_repo_and_modelscope_copy(tiny_hub: Path) -> None:
    llama = open_repo(tiny_hub, f"{ORG}/tiny-llama")
    main, tag = resolve_revision(llama, "main"), resolve_revision(llama, "v1.0")
    assert tag.kind == "tag" and main.kind == "branch" and main.commit != tag.commit
    assert {f.path for f in main.files} - {f.path for f in tag.files} == {"README.md"}
    assert open_repo(tiny_hub, f"{ORG}/llama-meta").gated
    assert (tiny_hub / TOKEN_FILE).read_text().strip()
    ms = open_repo(tiny_hub, f"{MS_ORG}/tiny-llama")
    assert ms.default == "master" and resolve_revision(ms, "v1.0.0").kind == "tag"
    assert resolve_revision(ms, None).name == "master"
    same = {f.path: f.sha256 for f in resolve_revision(ms, "v1.0.0").files}
    assert same == {f.path: f.sha256 for f in tag.files}


def test_make_tiny_is_deterministic_from_its_seed(tiny_hub: Path, tmp_path: Path) -> None:
    again = make_tiny_hub(tmp_path / "again", seed=0)
    assert again.changed is True
    assert _indexes(tmp_path / "again") == _indexes(tiny_hub)
    other = tmp_path / "other"
    make_tiny_hub(other, seed=1)
    first, second = _indexes(tiny_hub), _indexes(other)
    assert all(first[repo] != second[repo] for repo in first)


def test_make_tiny_again_keeps_what_is_in_place(tiny_hub: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_hub.rglob("*") if p.is_file()}
    result = make_tiny_hub(tiny_hub, seed=0)
    assert result.changed is False and len(result.details["kept"]) == 6
    assert {p: p.stat().st_mtime_ns for p in tiny_hub.rglob("*") if p.is_file()} == before


def test_make_tiny_cli_reports_json(cli, tiny_hub: Path) -> None:
    target = tiny_hub
    code, out, _ = cli("hub", "make-tiny", target, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["changed"] is False and result["details"]["token_file"] == str(target / TOKEN_FILE)
    assert yaml.safe_load((target / ORG / "llama-meta" / REPO_CONFIG).read_text()) == {"gated": True}


@pytest.mark.slow
def test_make_tiny_with_tensorflow_writes_a_tf1_bert_checkpoint(venvs, tmp_path: Path) -> None:
    python = venvs.get(TF_CONVERT)
    result = make_tiny_hub(tmp_path / "tf-hub", seed=0, tf_python=python, only=["bert-tf1"])
    assert result.details["written"] == [f"{ORG}/bert-tf1"]
    bert = tmp_path / "tf-hub" / ORG / "bert-tf1" / "main"
    names = sorted(p.name for p in bert.iterdir())
    assert "bert_config.json" in names and "vocab.txt" in names
    assert any(name.endswith(".index") for name in names) and any(".data-00000-of-00001" in n for n in names)
