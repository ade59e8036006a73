"""Tiny BERT checkpoints in TensorFlow formats (TF1 checkpoint, `tf_model.h5`), written by a TensorFlow env."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

#: BERT sizes of the tiny TF checkpoints.
TINY_BERT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
             "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
             "initializer_range": 0.02}

_BERT_TF_SCRIPT = textwrap.dedent(
    '''
    import json, os, re, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    from transformers import BertConfig, TFBertForPreTraining

    out, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = json.loads(sys.argv[4])
    tf.random.set_seed(seed)
    tf.keras.utils.set_random_seed(seed)
    config = BertConfig(**cfg)
    model = TFBertForPreTraining(config)
    ids = np.array([[1, 5, 9, 23, 42, 7, 2], [1, 17, 3, 64, 98, 11, 2]], dtype=np.int32)
    tt = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]], dtype=np.int32)
    model(ids, token_type_ids=tt)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # replace the initial values with non-trivial ones (incl. biases, norms)
        v.assign((rng.standard_normal(v.shape) * 0.1 + (1.0 if "gamma" in v.name else 0.0)).astype(np.float32))
    res = model(ids, token_type_ids=tt, output_hidden_states=True)
    np.savez(os.path.join(out, "tf_outputs.npz"), input_ids=ids, token_type_ids=tt,
             prediction_logits=res.prediction_logits.numpy(),
             seq_relationship_logits=res.seq_relationship_logits.numpy(),
             last_hidden_state=res.hidden_states[-1].numpy())
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(cfg["vocab_size"] - 5)]
        f.write("\\n".join(words) + "\\n")
    if mode in ("h5", "both"):
        h5_dir = out if mode == "h5" else os.path.join(out, "h5")
        model.save_pretrained(h5_dir)
        if mode == "h5":
            sys.exit(0)
        import shutil
        for name in ("tf_outputs.npz", "vocab.txt"):
            shutil.copyfile(os.path.join(out, name), os.path.join(h5_dir, name))

    def tf1_name(name):
        name = name.split(":")[0]
        name = name.split("/", 1)[1]  # drop the Keras model scope
        name = name.replace("layer_._", "layer_")
        name = re.sub(r"^(mlm|nsp)___cls/", "cls/", name)
        name = name.replace("predictions/transform/", "predictions/transform/")
        name = name.replace("embeddings/word_embeddings/weight", "embeddings/word_embeddings")
        name = re.sub(r"embeddings/(position|token_type)_embeddings/embeddings", r"embeddings/\\1_embeddings", name)
        name = name.replace("cls/predictions/bias", "cls/predictions/output_bias")
        name = name.replace("cls/seq_relationship/kernel", "cls/seq_relationship/output_weights")
        name = name.replace("cls/seq_relationship/bias", "cls/seq_relationship/output_bias")
        return name

    variables = {}
    for v in model.weights:
        name = tf1_name(v.name)
        value = v.numpy()
        if name.endswith("seq_relationship/output_weights"):
            value = value.T  # Google stores it [2, hidden]
        variables[name] = tf.Variable(value)
        variables[name + "/adam_m"] = tf.Variable(rng.standard_normal(value.shape).astype(np.float32))
        variables[name + "/adam_v"] = tf.Variable(rng.standard_normal(value.shape).astype(np.float32))
    variables["global_step"] = tf.Variable(np.int64(1000))
    saver = tf.compat.v1.train.Saver(var_list=variables, write_version=tf.compat.v1.train.SaverDef.V2)
    saver.save(None, os.path.join(out, "bert_model.ckpt"), write_meta_graph=False, write_state=False)
    with open(os.path.join(out, "bert_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    '''
)


def write_bert_tf(out: Path, *, python: Path | str, seed: int = 0, mode: str = "tf1",
                  config: dict[str, Any] | None = None) -> Path:
    """Write a tiny BERT with TensorFlow, run by `python` (a venv with tensorflow-cpu and transformers 4.x).

    `mode="tf1"` writes a Google-style TF1 checkpoint (`bert_model.ckpt.index/.data-00000-of-00001`,
    `bert_config.json`, `vocab.txt`) including `adam_m`/`adam_v` slots and `global_step`; `mode="h5"` writes
    Hugging Face's `tf_model.h5` + `config.json`; `mode="both"` writes the TF1 files and, in `h5/`, the h5 ones
    (one TensorFlow start instead of two). Both also write `tf_outputs.npz`: TF's own forward pass
    (pre-training heads and last hidden state) on fixed inputs. Returns `out`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY_BERT, **(config or {})}
    proc = subprocess.run([str(python), "-c", _BERT_TF_SCRIPT, str(out), str(seed), mode, json.dumps(cfg)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"writing the TF BERT failed:\n{proc.stderr[-4000:]}")
    return out


def write_bert_tf1(out: Path, *, python: Path | str, seed: int = 0) -> Path:
    """A Google-style TF1 BERT checkpoint with optimizer slots; see `write_bert_tf`."""
    return write_bert_tf(out, python=python, seed=seed, mode="tf1")
