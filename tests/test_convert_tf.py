"""`modelrig convert tf`: TF1 BERT checkpoints (conversion env) and `tf_model.h5` (no TensorFlow) to safetensors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from modelrig.hub import tiny
from tests.helpers.venvs import CACHE, TF_CONVERT, pip_find_links

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tf_python(venvs):
    return venvs.get(TF_CONVERT)


@pytest.fixture(scope="module")
def tf1(tmp_path_factory, tf_python):
    return tiny.write_bert_tf(tmp_path_factory.mktemp("tf") / "bert", python=tf_python, mode="both")


@pytest.fixture(scope="module")
def h5(tf1):
    return tf1 / "h5"


def _max_errors(model_dir, tf_dir) -> list[float]:
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(str(model_dir)).eval()
    ref = np.load(tf_dir / "tf_outputs.npz")
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ref["input_ids"]).long(),
                    token_type_ids=torch.from_numpy(ref["token_type_ids"]).long(), output_hidden_states=True)
    return [float(np.abs(out.prediction_logits.numpy() - ref["prediction_logits"]).max()),
            float(np.abs(out.seq_relationship_logits.numpy() - ref["seq_relationship_logits"]).max()),
            float(np.abs(out.hidden_states[-1].numpy() - ref["last_hidden_state"]).max())]


def test_tf1_bert_checkpoint_gives_a_pytorch_model_matching_tensorflow(tf1, tf_python, tmp_path, cli):
    code, out, err = cli("convert", "tf", "--checkpoint", tf1 / "bert_model.ckpt", "--config",
                         tf1 / "bert_config.json", "--model-type", "bert", "--out", tmp_path / "pt",
                         "--tf-python", tf_python, "--json")
    assert code == 0, err
    details = json.loads(out)["details"]
    assert details["skipped"] > 0  # adam_m / adam_v / global_step were filtered before loading
    assert details["tied"] == {"cls.predictions.decoder.bias": "cls.predictions.bias",
                               "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}
    assert max(_max_errors(tmp_path / "pt", tf1)) < 1e-5
    with safe_open(str(tmp_path / "pt" / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert not [n for n in names if "adam" in n or "global_step" in n]
    assert (tmp_path / "pt" / "vocab.txt").is_file()
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]


def test_h5_converts_without_tensorflow_and_matches_tensorflow(h5, tmp_path, cli):
    assert importlib.util.find_spec("tensorflow") is None  # the toolkit env has no TensorFlow
    code, _, err = cli("convert", "tf", "--checkpoint", h5 / "tf_model.h5", "--out", tmp_path / "pt")
    assert code == 0, err
    assert max(_max_errors(tmp_path / "pt", h5)) < 1e-5
    code, out, _ = cli("convert", "tf", "--checkpoint", h5, "--out", tmp_path / "pt", "--json")
    assert code == 0 and json.loads(out)["changed"] is False


def test_tf1_checkpoint_missing_its_data_file_is_refused(tf1, tmp_path, tf_python, cli):
    import shutil

    broken = tmp_path / "bert"
    shutil.copytree(tf1, broken)
    next(broken.glob("*.data-*")).unlink()
    code, _, err = cli("convert", "tf", "--checkpoint", broken / "bert_model.ckpt", "--config",
                       broken / "bert_config.json", "--out", tmp_path / "pt", "--tf-python", tf_python)
    assert code == 6 and ".data-" in err


def test_without_tf_python_the_conversion_env_is_built_under_the_data_root_and_reused(tf1, tmp_path, data_root, cli,
                                                                                     monkeypatch):
    """Unattended use: no --tf-python, so `modelrig env` machinery builds the TF conversion env (from uv's warm
    cache of the test venvs) and the second conversion finds it."""
    monkeypatch.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
    monkeypatch.delenv("MODELRIG_TF_PYTHON", raising=False)
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "config.yaml").write_text(yaml.safe_dump({"pip": {"find_links": pip_find_links(),
                                                                   "use_torch_index": False}}))
    args = ["convert", "tf", "--checkpoint", tf1 / "bert_model.ckpt", "--config", tf1 / "bert_config.json",
            "--model-type", "bert", "--json"]
    code, out, err = cli(*args, "--out", tmp_path / "pt")
    assert code == 0, err
    assert json.loads(out)["changed"] is True
    assert max(_max_errors(tmp_path / "pt", tf1)) < 1e-5
    envs = [p for p in (data_root / "envs").iterdir() if p.is_dir()]
    assert len(envs) == 1
    probe = subprocess.run([envs[0] / "bin" / "python", "-c",
                            "import tensorflow, transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "4.47.1"
    code, _out, err = cli(*args, "--out", tmp_path / "pt2")
    assert code == 0, err
    assert [p for p in (data_root / "envs").iterdir() if p.is_dir()] == envs
    assert (tmp_path / "pt2" / "model.safetensors").read_bytes() == (tmp_path / "pt" / "model.safetensors").read_bytes()


def test_tf_conversion_env_matches_the_toolkit_python_and_torch():
    from modelrig.config import HostConfig, PipSettings
    from modelrig.convert.tf import tf_conversion_env

    env = tf_conversion_env(HostConfig())
    assert env.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert env.torch.requirements == [f"torch=={torch.__version__.split('+')[0]}"]
    assert env.torch.index_url == "https://download.pytorch.org/whl/cpu"
    assert "transformers==4.47.1" in env.packages and "tensorflow-cpu" in env.packages
    assert tf_conversion_env(HostConfig(pip=PipSettings(use_torch_index=False))).torch.index_url is None
