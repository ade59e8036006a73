"""`modelrig convert tf` for every type `transformers-cli convert` took, against transformers' own conversion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelrig.convert.tf1_types import TF1_TYPES, model_class_for, resolve_type
from modelrig.errors import UsageError
from tests.helpers.tf1_checkpoints import FIXTURES, H5_FIXTURES, TINY_CONFIGS, compare_all, write_all
from tests.helpers.venvs import TF_CONVERT


@pytest.fixture(scope="session")
def tf1_releases(tmp_path_factory: pytest.TempPathFactory, venvs: Any) -> tuple[Path, dict[str, int], Path]:
    """Every fixture release (one TensorFlow process), and the conversion env's python."""
    python = venvs.get(TF_CONVERT)
    root = tmp_path_factory.mktemp("tf1")
    return root, write_all(root, python=python), python


def _checkpoint(root: Path, name: str) -> Path:
    kind = FIXTURES[name][0]
    return {"gpt": root / name, "xlm": root / name / "mlm_tiny.pth"}.get(kind, root / name / "model.ckpt")


def _config(root: Path, name: str) -> Path | None:
    found = sorted((root / name).glob("*config.json")) + sorted((root / name).glob("hparams.json"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def converted(tf1_releases: tuple[Path, dict[str, int], Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each release converted by modelrig (type from the config; XLM's named), and compared in one process."""
    from modelrig.convert.tf import convert_tf1
    from modelrig.convert.tf_h5 import convert_h5

    root, _slots, python = tf1_releases
    out = tmp_path_factory.mktemp("converted")
    details: dict[str, Any] = {}
    for name, (kind, task) in FIXTURES.items():
        result = convert_tf1(checkpoint=_checkpoint(root, name), config=_config(root, name),
                             model_type="xlm" if kind == "xlm" else None, finetuning_task=task, out=out / name,
                             python=python)
        details[name] = result.details
    for name in H5_FIXTURES:
        details[name] = convert_h5(h5=root / name / "release" / "tf_model.h5", out=out / name,
                                   python=python).details
    pairs = {name: (FIXTURES[name][0], out / name, root / name / "ref") for name in FIXTURES}
    pairs.update({name: (kind, out / name, root / name / "ref") for name, (kind, _arch) in H5_FIXTURES.items()})
    probe = (str(root / "bert" / "model.ckpt"), "bert/embeddings/word_embeddings/adam_m")
    return details, compare_all(pairs, python=python, slot_probe=probe)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_release_converts_to_transformers_own_weights_and_logits(name, converted):
    details, compared = converted
    kind, task = FIXTURES[name]
    expected_class = model_class_for(TF1_TYPES[kind], task=task)[0]
    assert compared[name]["arch"] == expected_class
    assert compared[name]["tensors"] > 0
    assert compared[name]["different"] == []
    assert compared[name]["logits_max_diff"] == 0.0
    assert details[name]["model_type"] == kind


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(H5_FIXTURES))
def test_tf_model_h5_converts_to_what_from_pretrained_from_tf_gives(name, converted):
    """TF2 `tf_model.h5` files as transformers saves them: h5py where the toolkit's transformers maps every weight,
    else (Transformer-XL: transformers 5 has no such class) `from_pretrained(..., from_tf=True)` in the conversion
    env; the same tensors and logits either way."""
    details, compared = converted
    assert compared[name]["arch"] == H5_FIXTURES[name][1]
    assert compared[name]["different"] == []
    assert compared[name]["logits_max_diff"] == 0.0
    assert details[name]["read_with"] == ("TF env" if name == "h5_transfo_xl" else "h5py")


@pytest.mark.slow
def test_optimizer_slots_are_never_read(tf1_releases, converted):
    """The fixture overwrote every adam slot's bytes, so TensorFlow refuses to read one (its checksum fails); the
    conversions succeeded, so none was read, and each skipped exactly the slots plus global_step."""
    _root, slots, _python = tf1_releases
    details, compared = converted
    assert "checksum" in compared["__slot_probe__"].lower() or "data loss" in compared["__slot_probe__"].lower()
    for name, count in slots.items():
        assert count > 0
        assert details[name]["skipped"] == count + 1, name


@pytest.mark.slow
def test_checkpoint_with_fewer_layers_than_its_config_is_refused_naming_the_first_unfilled_weight(
        tf1_releases, tmp_path, cli):
    root, _slots, python = tf1_releases
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({**TINY_CONFIGS["bert"], "num_hidden_layers": 3}))
    code, _out, err = cli("convert", "tf", "--checkpoint", root / "bert" / "model.ckpt", "--config", config,
                          "--out", tmp_path / "pt", "--tf-python", python)
    assert code == 6
    assert "no variable fills bert.encoder.layer.2.attention.self.query.weight" in err
    assert not (tmp_path / "pt").exists()


@pytest.mark.slow
def test_variable_of_another_shape_is_refused_naming_it(tf1_releases, tmp_path, cli):
    root, _slots, python = tf1_releases
    config = tmp_path / "albert_config.json"
    config.write_text(json.dumps({**TINY_CONFIGS["albert"], "intermediate_size": 40}))
    code, _out, err = cli("convert", "tf", "--checkpoint", root / "albert" / "model.ckpt", "--config", config,
                          "--out", tmp_path / "pt", "--tf-python", python, "--json")
    assert code == 6
    assert ("variable bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/bias does not fit "
            "the AlbertForPreTraining") in err
    assert err.strip().endswith("[checkpoint_mismatch]")
    assert not (tmp_path / "pt").exists()


def test_unknown_model_type_is_refused_naming_the_supported_ones(tmp_path, cli):
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    code, _out, err = cli("convert", "tf", "--checkpoint", tmp_path / "model.ckpt", "--model-type", "roberta",
                          "--out", tmp_path / "pt", "--tf-python", "/nonexistent")
    assert code == 2
    assert "--model-type roberta: not a convertible type; supported: albert, bert, electra, funnel, gpt, gpt2, " \
           "lxmert, rembert, t5, transfo_xl, xlm, xlnet" in err


@pytest.mark.parametrize("kind", sorted(set(TINY_CONFIGS) - {"xlm"}))
def test_the_type_comes_from_the_shape_of_the_original_config(kind):
    assert resolve_type(None, TINY_CONFIGS[kind], config_path=None).name == kind


def test_model_type_in_the_config_and_the_flag_decide_before_the_shape():
    assert resolve_type(None, {**TINY_CONFIGS["bert"], "model_type": "electra"}, config_path=None).name == "electra"
    assert resolve_type(None, {"model_type": "openai-gpt"}, config_path=None).name == "gpt"
    assert resolve_type("albert", TINY_CONFIGS["bert"], config_path=None).name == "albert"
    with pytest.raises(UsageError, match=r"c.json: model_type 'roberta' is not a convertible type"):
        resolve_type(None, {"model_type": "roberta"}, config_path=Path("c.json"))
    with pytest.raises(UsageError, match=r"c.json: the keys do not tell the model type; pass --model-type"):
        resolve_type(None, {"hidden_size": 4}, config_path=Path("c.json"))


def test_xlnet_fine_tuning_task_picks_the_head_and_label_count():
    xlnet = TF1_TYPES["xlnet"]
    assert model_class_for(xlnet, task="MNLI") == ("XLNetForSequenceClassification",
                                                   {"finetuning_task": "mnli", "num_labels": 3})
    assert model_class_for(xlnet, task="squad2") == ("XLNetForQuestionAnswering", {"finetuning_task": "squad2"})
    assert model_class_for(xlnet, task=None) == ("XLNetLMHeadModel", {})
    with pytest.raises(UsageError, match="only xlnet checkpoints take one, not bert"):
        model_class_for(TF1_TYPES["bert"], task="mnli")


def test_a_tf_only_release_is_one_manifest_step_with_its_type(tmp_path):
    from pydantic import ValidationError

    from modelrig.manifest import TfToPt

    step = TfToPt(input="release", model_type="xlnet", config="xlnet_config.json", finetuning_task="sts-b")
    assert (step.model_type, step.finetuning_task) == ("xlnet", "sts-b")
    assert TfToPt(input="release").model_type is None
    with pytest.raises(ValidationError, match="'roberta' is not a convertible type; supported: albert"):
        TfToPt(input="release", model_type="roberta")
    with pytest.raises(ValidationError, match="a path inside the input"):
        TfToPt(input="release", checkpoint="../elsewhere/model.ckpt")


def test_the_manifest_schema_takes_exactly_the_types_the_converter_knows():
    from modelrig.manifest.schema import TF1_MODEL_TYPES

    assert TF1_MODEL_TYPES == tuple(sorted(TF1_TYPES))


def test_release_folder_config_is_the_one_there(tmp_path):
    from modelrig.convert.tf import tf1_config
    from modelrig.errors import ConversionError

    assert tf1_config(tmp_path, None) is None
    (tmp_path / "xlnet_config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert tf1_config(tmp_path, None) == tmp_path / "xlnet_config.json"
    shutil.copy(tmp_path / "xlnet_config.json", tmp_path / "hparams.json")
    with pytest.raises(ConversionError, match="several configs"):
        tf1_config(tmp_path, None)


def _xlm_release(folder: Path) -> Path:
    """A tiny release in XLM's original layout (weights under their XLM names, params, dictionary)."""
    import torch

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(12, 8, generator=gen)
    model = {"embeddings.weight": emb, "position_embeddings.weight": torch.randn(16, 8, generator=gen),
             "layer_norm_emb.weight": torch.ones(8), "pred_layer.proj.weight": emb,
             "pred_layer.proj.bias": torch.zeros(12)}
    words = {w: i for i, w in enumerate(["<s>", "</s>", "<pad>", "<unk>", *(f"w{i}@@" for i in range(8))])}
    torch.save({"model": model, "params": {"emb_dim": 8, "n_words": 12, "n_layers": 0}, "dico_word2id": words},
               folder / "mlm_tiny.pth")
    return folder


def test_a_tf_only_release_converts_from_one_manifest_file(tmp_path, data_root, cli):
    """A release no hub converts for you (XLM's original pickle here; no TensorFlow needed for it) is one YAML
    file: a local source and a tf_to_pt step naming its type and checkpoint."""
    from safetensors.torch import load_file

    release = _xlm_release(tmp_path / "release")
    manifest = {
        "id": "xlm-original-tiny", "title": "XLM in its original release format", "license": {"name": "cc-by-nc-4.0"},
        "weights": {"release": {"local": {"var": "xlm_release_dir"}}},
        "convert": [{"tf_to_pt": {"input": "release", "model_type": "xlm", "checkpoint": "mlm_tiny.pth",
                                  "output": "final"}}],
        "env": {"python": "3.11", "torch": "==2.13.0", "packages": ["transformers==4.47.1"]},
        "resources": {"params_b": 0.0001, "memory_gb": {"fp32": 0.1}, "disk_gb": 0.1},
    }
    path = tmp_path / "xlm-original-tiny.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, out, err = cli("convert", path, "--local", f"xlm_release_dir={release}", "--json")
    assert code == 0, err
    final = data_root / "models" / "xlm-original-tiny" / "final"
    got = load_file(str(final / "model.safetensors"))
    assert sorted(got) == ["pred_layer.proj.bias", "pred_layer.proj.weight", "transformer.embeddings.weight",
                           "transformer.layer_norm_emb.weight", "transformer.position_embeddings.weight"]
    assert json.loads((final / "config.json").read_text())["architectures"] == ["XLMWithLMHeadModel"]
    assert json.loads((final / "vocab.json").read_text())["w0"] == 4  # BPE continuation: the @@ dropped
    code, out, err = cli("convert", path, "--local", f"xlm_release_dir={release}", "--json")
    assert code == 0 and json.loads(out)["changed"] is False


def test_without_config_or_type_the_release_folder_config_decides(tmp_path, cli):
    """No --config, no --model-type: the config beside the checkpoint is found and its shape gives the type, so
    the run gets as far as the checkpoint itself (here missing its data file)."""
    (tmp_path / "albert_config.json").write_text(json.dumps(TINY_CONFIGS["albert"]))
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    code, _out, err = cli("convert", "tf", "--checkpoint", tmp_path / "model.ckpt", "--out", tmp_path / "pt",
                          "--tf-python", "/nonexistent")
    assert code == 6 and "no .data-NNNNN-of-NNNNN file next to the index" in err
    (tmp_path / "albert_config.json").unlink()
    code, _out, err = cli("convert", "tf", "--checkpoint", tmp_path / "model.ckpt", "--out", tmp_path / "pt")
    assert code == 2 and "no config to tell the model type; pass --model-type" in err
