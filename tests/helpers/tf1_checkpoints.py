"""Tiny original releases of every `transformers-cli convert` type, written by real TensorFlow in one process.

For each type the writer builds the PyTorch model transformers' converter builds from a tiny config, gives it
seeded random weights, and saves them under the original release's variable names (TF1 checkpoints with
`adam_m`/`adam_v` slots and `global_step`; OpenAI GPT's `params_N.npy` folder; XLM's pickle). It then converts
each with transformers' own `load_tf_weights_in_<type>` (XLM: `convert_xlm_checkpoint_to_pytorch`) +
`save_pretrained` into `ref/`, checks that this reproduces the original weights exactly (so the names are the
ones the loader reads), and keeps that converted state (`ref_state.pt`, every name) for the comparison. Finally
the optimizer slots' bytes in each `.data` file are overwritten, so reading one fails TensorFlow's checksum.
`tf_model.h5` fixtures are Keras models saved by transformers, their reference `from_pretrained(from_tf=True)`.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

#: Tiny configs, as the original releases' JSON (no `model_type`: the type comes from the keys' shape).
_COMMON = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64,
           "initializer_range": 0.02}
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": {**_COMMON, "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "hidden_act": "gelu", "type_vocab_size": 2},
    "albert": {**_COMMON, "vocab_size": 99, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2,
               "num_hidden_groups": 1, "inner_group_num": 1, "num_attention_heads": 2, "intermediate_size": 37,
               "hidden_act": "gelu", "type_vocab_size": 2},
    "funnel": {"vocab_size": 99, "block_sizes": [1, 1], "num_decoder_layers": 1, "d_model": 32, "n_head": 2,
               "d_head": 16, "d_inner": 37, "hidden_dropout": 0.0, "attention_dropout": 0.0,
               "activation_dropout": 0.0, "type_vocab_size": 3},
    "gpt": {"vocab_size": 99, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "afn": "gelu",
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "gpt2": {"vocab_size": 99, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "t5": {"vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 4, "relative_attention_num_buckets": 8, "dropout_rate": 0.0, "feed_forward_proj": "relu",
           "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1},
    "xlnet": {"vocab_size": 99, "d_model": 32, "n_layer": 2, "n_head": 2, "d_inner": 37, "untie_r": True,
              "ff_activation": "gelu", "dropout": 0.0},
    "lxmert": {**_COMMON, "vocab_size": 99, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37,
               "l_layers": 2, "x_layers": 1, "r_layers": 1, "visual_feat_dim": 16, "visual_pos_dim": 4,
               "num_qa_labels": 5, "num_object_labels": 7, "num_attr_labels": 4, "type_vocab_size": 2},
    "rembert": {**_COMMON, "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "input_embedding_size": 16, "output_embedding_size": 24, "intermediate_size": 37,
                "type_vocab_size": 2, "hidden_act": "gelu"},
    "transfo_xl": {"vocab_size": 99, "cutoffs": [40, 80], "d_model": 32, "d_embed": 32, "n_head": 2, "d_head": 16,
                   "d_inner": 37, "div_val": 2, "n_layer": 2, "mem_len": 8, "tgt_len": 7, "ext_len": 0,
                   "clamp_len": 16, "dropout": 0.0, "dropatt": 0.0},
    "xlm": {"vocab_size": 99, "emb_dim": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "attention_dropout": 0.0,
            "max_position_embeddings": 64, "n_langs": 1, "use_lang_emb": False, "causal": False, "asm": False},
}
#: Fixtures: name -> (model type, fine-tuning task). xlnet_sst2 is XLNet fine-tuned on a GLUE task.
FIXTURES: dict[str, tuple[str, str | None]] = {**{t: (t, None) for t in TINY_CONFIGS}, "xlnet_sst2": ("xlnet", "sst-2")}
#: `tf_model.h5` fixtures (TF2 Keras models saved by transformers): name -> (model type of the tiny config, class).
H5_FIXTURES: dict[str, tuple[str, str]] = {"h5_albert": ("albert", "AlbertForPreTraining"),
                                           "h5_gpt2": ("gpt2", "GPT2LMHeadModel"),
                                           "h5_t5": ("t5", "T5ForConditionalGeneration"),
                                           "h5_xlnet": ("xlnet", "XLNetLMHeadModel"),
                                           "h5_transfo_xl": ("transfo_xl", "TransfoXLLMHeadModel")}

_WRITER = textwrap.dedent(
    r'''
    import importlib, json, os, re, struct, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    import torch
    import transformers
    from torch import nn
    from transformers.models.deprecated.transfo_xl import modeling_transfo_xl as txl
    from transformers.models.xlnet.modeling_xlnet import build_tf_xlnet_to_pytorch_map

    # transformers 4.47's Transformer-XL forward calls `type_as(dtype=...)`, which torch never accepted: give the
    # call the meaning it intends (a cast), so its logits can be computed at all.
    _type_as = torch.Tensor.type_as
    torch.Tensor.type_as = lambda self, other=None, dtype=None: (self.to(dtype) if other is None
                                                                 else _type_as(self, other))

    root = sys.argv[1]
    configs, fixtures, classes = json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    h5_fixtures = json.loads(sys.argv[5])
    ids = torch.tensor([[1, 5, 9, 23, 42, 7, 2], [1, 17, 3, 64, 98, 11, 2]])

    def inputs(kind, config):
        tt = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
        if kind in ("bert", "albert", "rembert", "funnel"):
            return {"input_ids": ids, "token_type_ids": tt}
        if kind == "t5":
            return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
        if kind == "lxmert":
            g = torch.Generator().manual_seed(1)
            return {"input_ids": ids, "token_type_ids": tt, "visual_feats": torch.randn(2, 3, 16, generator=g),
                    "visual_pos": torch.rand(2, 3, 4, generator=g)}
        return {"input_ids": ids}

    def grouped(parts):
        path = []
        for part in parts:
            if part.isdigit() and path and re.fullmatch(r"[A-Za-z]+", path[-1]):
                path[-1] = f"{path[-1]}_{part}"
            else:
                path.append(part)
        return path

    def bert_like(model, prefix=""):
        mods = dict(model.named_modules())
        out = {}
        for pname, p in model.named_parameters():
            mod_name, _, leaf = pname.rpartition(".")
            mod, path, transpose = mods[mod_name], grouped(mod_name.split(".")), False
            if isinstance(mod, nn.LayerNorm):
                leaf = {"weight": "gamma", "bias": "beta"}[leaf]
            elif isinstance(mod, nn.Embedding) and path[-1].endswith("_embeddings"):
                leaf = None
            elif isinstance(mod, nn.Linear):
                if leaf == "weight":
                    leaf, transpose = "kernel", True
            elif leaf == "bias":
                leaf = "output_bias"
            out[prefix + "/".join(path + ([leaf] if leaf else []))] = (p, transpose)
        return out

    ALBERT = [(r"^albert\.embeddings\.(\w+_embeddings)\.weight$", r"bert/embeddings/\1", False),
              (r"^albert\.embeddings\.LayerNorm\.", "bert/embeddings/LayerNorm/", False),
              (r"^albert\.encoder\.embedding_hidden_mapping_in\.", "bert/encoder/embedding_hidden_mapping_in/", True),
              (r"^albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.",
               r"bert/encoder/transformer/group_\1/inner_group_\2/", None),
              (r"/full_layer_layer_norm\.", "/LayerNorm_1/", False),
              (r"/attention\.(query|key|value)\.", r"/attention_1/self/\1/", True),
              (r"/attention\.dense\.", "/attention_1/output/dense/", True),
              (r"/attention\.LayerNorm\.", "/LayerNorm/", False),
              (r"/ffn\.", "/ffn_1/intermediate/dense/", True),
              (r"/ffn_output\.", "/ffn_1/intermediate/output/dense/", True),
              (r"^albert\.pooler\.", "bert/pooler/dense/", True),
              (r"^predictions\.bias$", "cls/predictions/output_bias", False),
              (r"^predictions\.LayerNorm\.", "cls/predictions/transform/LayerNorm/", False),
              (r"^predictions\.dense\.", "cls/predictions/transform/dense/", True),
              (r"^sop_classifier\.classifier\.weight$", "cls/seq_relationship/output_weights", False),
              (r"^sop_classifier\.classifier\.bias$", "cls/seq_relationship/output_bias", False)]

    def albert(model):
        out = {}
        for pname, p in model.named_parameters():
            name, transpose = pname, False
            for pattern, repl, t in ALBERT:
                name, n = re.subn(pattern, repl, name)
                if n and t is not None:
                    transpose = t
            name = re.sub(r"LayerNorm(_1)?[./]weight$", r"LayerNorm\1/gamma", name)
            name = re.sub(r"LayerNorm(_1)?[./]bias$", r"LayerNorm\1/beta", name)
            name = re.sub(r"/(weight)$", "/kernel", name) if transpose else name
            name = re.sub(r"\.(bias|weight)$", r"/\1", name).replace("/weight", "/kernel")
            out[name] = (p, transpose)
        return out

    def funnel(model, config):
        starts = [sum(config.block_sizes[:b]) for b in range(len(config.block_sizes))]
        swap = {"attention": "rel_attn", "q_head": "q", "k_head": "k", "v_head": "v", "post_proj": "o",
                "ffn": "ff", "linear_1": "layer_1", "linear_2": "layer_2"}
        out = {}
        for pname, p in model.named_parameters():
            parts, transpose = pname.split("."), False
            if parts[0] == "embeddings":
                head = ["input"]
                parts = ["word_embedding", "lookup_table"] if parts[1] == "word_embeddings" else parts[1:]
            elif parts[0] == "encoder":
                head = ["encoder", f"layer_{starts[int(parts[2])] + int(parts[3])}"]
                parts = parts[4:]
            else:
                head = ["decoder", f"layer_{config.num_hidden_layers + int(parts[2])}"]
                parts = parts[3:]
            parts = [swap.get(x, x) for x in parts]
            if parts[-1] == "r_kernel":
                parts[-1:] = ["r", "kernel"]
            elif parts[-1] == "weight" and "layer_norm" in parts:
                parts[-1] = "gamma"
            elif parts[-1] == "bias" and "layer_norm" in parts:
                parts[-1] = "beta"
            elif parts[-1] == "weight":
                parts[-1], transpose = "kernel", True
            out["model/" + "/".join(head + parts)] = (p, transpose)
        return out

    def gpt(model, base="model/"):
        out = {}
        for pname, p in model.named_parameters():
            parts = pname.split(".")
            if parts[0] in ("wte", "wpe", "tokens_embed", "positions_embed"):
                out[base + {"tokens_embed": "wte", "positions_embed": "wpe"}.get(parts[0], parts[0])] = (p, False)
                continue
            if parts[0] == "h":
                parts[:2] = [f"h{parts[1]}"]
            leaf = {"weight": "g" if parts[-2].startswith("ln") else "w", "bias": "b"}[parts[-1]]
            out[base + "/".join(parts[:-1] + [leaf])] = (p, "conv")
        return out

    def t5(model):
        out = {}
        for pname, p in model.named_parameters():
            name = re.sub(r"block\.(\d+)", lambda m: f"block_{int(m[1]):03d}", pname)
            name = re.sub(r"layer\.(\d+)", lambda m: f"layer_{int(m[1]):03d}", name)
            if name == "shared.weight":
                out["shared/embedding"] = (p, False)
                continue
            name = re.sub(r"(layer_norm)\.weight$", r"\1.scale", name)
            name = re.sub(r"\.(relative_attention_bias|q|k|v|o)\.weight$", r".\1", name)
            name = re.sub(r"\.(wi|wo)\.weight$", r".\1.kernel", name)
            out[name.replace(".", "/")] = (p, not name.endswith("scale"))
        return out

    def from_map(mapping, transpose):
        out = {}
        for name, pointer in mapping.items():
            out[name] = (pointer, transpose(name))
        return out

    def tf_names(kind, model, config, task):
        if kind in ("bert", "lxmert"):
            return bert_like(model)
        if kind == "rembert":
            return bert_like(model, prefix="bert/")
        if kind == "albert":
            return albert(model)
        if kind == "funnel":
            return funnel(model, config)
        if kind in ("gpt", "gpt2"):
            return gpt(model)
        if kind == "t5":
            return t5(model)
        if kind == "xlnet":
            wanted = {"model/sequnece_summary/summary/kernel": 0, f"model/regression_{task}/logit/kernel": 0}
            return from_map(build_tf_xlnet_to_pytorch_map(model, config, wanted),
                            lambda n: "kernel" in n and ("ff" in n or "summary" in n or "logit" in n))
        if kind == "transfo_xl":
            return from_map(txl.build_tf_to_pytorch_map(model, config), lambda n: "kernel" in n or "proj" in n)
        raise SystemExit(f"no TF names for {kind}")

    def value(p, transpose):
        if isinstance(p, list):
            return np.stack([x.detach().numpy() for x in p])
        a = p.detach().numpy()
        if transpose == "conv":
            return a[None] if a.ndim == 2 else a
        return a.T.copy() if transpose else a

    def set_random(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                base = 1.0 if re.search(r"(LayerNorm|layer_norm|ln_\d|ln_f)\.weight$", name) else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + base)

    def loaded_all(model, loader, path, config):
        params = dict(model.named_parameters(remove_duplicate=False))
        before = {n: p.data_ptr() for n, p in params.items()}
        loader(model, config, path)
        missed = [n for n, p in params.items() if p.data_ptr() == before[n]]
        assert not missed, f"{path}: the loader left {missed[:3]} unloaded"

    def slot_spans(prefix):
        """(offset, size) in the .data file of every optimizer slot, from the .index SSTable."""
        from tensorflow.core.protobuf.tensor_bundle_pb2 import BundleEntryProto
        data = open(prefix + ".index", "rb").read()

        def varint(buf, pos):
            shift = result = 0
            while True:
                b = buf[pos]
                result |= (b & 0x7F) << shift
                pos += 1
                if not b & 0x80:
                    return result, pos
                shift += 7

        def entries(block):
            restarts = struct.unpack("<I", block[-4:])[0]
            end, pos, key = len(block) - 4 - 4 * restarts, 0, b""
            while pos < end:
                shared, pos = varint(block, pos)
                unshared, pos = varint(block, pos)
                vlen, pos = varint(block, pos)
                key = key[:shared] + block[pos:pos + unshared]
                pos += unshared
                yield key, block[pos:pos + vlen]
                pos += vlen

        footer = data[-48:]
        _, pos = varint(footer, 0)
        _, pos = varint(footer, pos)
        index_off, pos = varint(footer, pos)
        index_size, pos = varint(footer, pos)
        spans = []
        for _, handle in entries(data[index_off:index_off + index_size]):
            off, p = varint(handle, 0)
            size, p = varint(handle, p)
            for key, val in entries(data[off:off + size]):
                name = key.decode()
                if name and ("adam_m" in name or "adam_v" in name):
                    entry = BundleEntryProto.FromString(val)
                    spans.append((entry.offset, entry.size))
        return spans

    report = {}
    for name, (kind, task) in fixtures.items():
        out = os.path.join(root, name)
        os.makedirs(os.path.join(out, "ref"), exist_ok=True)
        cfg_file = os.path.join(out, f"{kind}_config.json" if kind != "gpt2" else "hparams.json")
        cls_name, loader_name, loader_module = classes[name]
        module = importlib.import_module(loader_module)
        cls = getattr(module, cls_name, None) or getattr(transformers, cls_name)
        config = cls.config_class(**configs[kind])
        if task:
            config.finetuning_task = task
            config.num_labels = 2
        torch.manual_seed(0)
        model = cls(config).eval()
        set_random(model, seed=len(name))
        if kind != "xlm":
            with open(cfg_file, "w") as f:
                json.dump(configs[kind], f, indent=2, sort_keys=True)
        if kind == "xlm":
            state = {(k[len("transformer."):] if k.startswith("transformer.") else k): v.clone()
                     for k, v in model.state_dict().items()}
            params = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool, list))}
            params["n_words"] = config.vocab_size
            words = {w: i for i, w in enumerate(["<s>", "</s>", "<pad>", "<unk>"] + [f"w{i}@@" if i % 3 else f"w{i}"
                                                                                   for i in range(95)])}
            ckpt = os.path.join(out, "mlm_tiny.pth")
            torch.save({"model": state, "params": params, "dico_word2id": words,
                        "dico_id2word": {i: w for w, i in words.items()}}, ckpt)
            from transformers.models.xlm.convert_xlm_original_pytorch_checkpoint_to_pytorch import (
                convert_xlm_checkpoint_to_pytorch)
            convert_xlm_checkpoint_to_pytorch(ckpt, os.path.join(out, "ref"))
            ref = transformers.XLMWithLMHeadModel.from_pretrained(os.path.join(out, "ref")).eval()
        else:
            names = tf_names(kind, model, config, task)
            arrays = {n: value(p, t) for n, (p, t) in names.items()}
            if kind == "gpt":
                order = sorted(names, key=lambda n: (n != "model/wpe", n != "model/wte", n))
                shapes = [list(arrays[n].shape) for n in order]
                flat = np.concatenate([arrays[n].astype(np.float32).reshape(-1) for n in order])
                for i, piece in enumerate(np.array_split(flat, 10)):
                    np.save(os.path.join(out, f"params_{i}.npy"), piece)
                json.dump(shapes, open(os.path.join(out, "params_shapes.json"), "w"))
                json.dump(["model/we:0"] + [n + ":0" for n in order[2:]],
                          open(os.path.join(out, "parameters_names.json"), "w"))
                path = ref_path = out
            else:
                variables = {}
                rng = np.random.default_rng(len(name))
                for n, a in arrays.items():
                    variables[n] = tf.Variable(a)
                    variables[n + "/adam_m"] = tf.Variable(rng.standard_normal(a.shape).astype(np.float32))
                    variables[n + "/adam_v"] = tf.Variable(rng.standard_normal(a.shape).astype(np.float32))
                variables["global_step"] = tf.Variable(np.int64(1000))
                saver = tf.compat.v1.train.Saver(var_list=variables, write_version=tf.compat.v1.train.SaverDef.V2)
                path = ref_path = os.path.join(out, "model.ckpt")
                saver.save(None, path, write_meta_graph=False, write_state=False)
                if kind == "gpt2":  # its loader reads every variable as a weight: give it the weights alone
                    ref_path = os.path.join(out, "ref", "weights", "model.ckpt")
                    clean = {n: v for n, v in variables.items() if n in arrays}
                    tf.compat.v1.train.Saver(var_list=clean, write_version=tf.compat.v1.train.SaverDef.V2).save(
                        None, ref_path, write_meta_graph=False, write_state=False)
            ref = cls(config).eval()
            loaded_all(ref, getattr(module, loader_name), ref_path, config)
            for p in ref.parameters():  # XLNet's loader leaves views of one array, which save_pretrained refuses
                p.data = p.data.contiguous().clone()
            ref.save_pretrained(os.path.join(out, "ref"))
        for k, v in model.state_dict().items():  # the loader reproduces the original weights: the names are right
            assert torch.equal(v, ref.state_dict()[k]), f"{name}: {k} differs after transformers' own loading"
        torch.save(ref.state_dict(), os.path.join(out, "ref_state.pt"))  # every name, tied ones included
        if kind not in ("gpt", "xlm"):
            spans = slot_spans(path)
            with open(path + ".data-00000-of-00001", "r+b") as f:
                for offset, size in spans:
                    f.seek(offset)
                    f.write(b"\xa5" * size)
            report[name] = len(spans)
    for name, (kind, arch) in h5_fixtures.items():  # TF2: Keras models saved as tf_model.h5 by transformers
        out = os.path.join(root, name)
        pt_cls, tf_cls = getattr(transformers, arch), getattr(transformers, "TF" + arch)
        config = pt_cls.config_class(**configs[kind])
        tf.keras.utils.set_random_seed(len(name))
        keras_model = tf_cls(config)
        keras_model(keras_model.dummy_inputs)
        rng = np.random.default_rng(len(name))
        for v in keras_model.weights:
            v.assign((rng.standard_normal(v.shape) * 0.1).astype(v.dtype.as_numpy_dtype))
        weights = {v.name: v for v in keras_model.weights}
        for vname, v in weights.items():  # TF ALBERT keeps the MLM bias twice; PyTorch (and any real export) once
            twin = weights.get(vname.replace("decoder/bias:0", "bias:0"))
            if vname.endswith("decoder/bias:0") and twin is not None:
                v.assign(twin)
        keras_model.save_pretrained(os.path.join(out, "release"))
        ref = pt_cls.from_pretrained(os.path.join(out, "release"), from_tf=True).eval()
        for p in ref.parameters():
            p.data = p.data.contiguous().clone()
        ref.save_pretrained(os.path.join(out, "ref"))
        torch.save(ref.state_dict(), os.path.join(out, "ref_state.pt"))
    print(json.dumps(report))
    '''
)

_COMPARER = textwrap.dedent(
    r'''
    import json, sys
    import numpy as np
    import torch
    import transformers
    from transformers.models.deprecated.transfo_xl import modeling_transfo_xl as txl

    # transformers 4.47's Transformer-XL forward calls `type_as(dtype=...)`, which torch never accepted: give the
    # call the meaning it intends (a cast), so its logits can be computed at all.
    _type_as = torch.Tensor.type_as
    torch.Tensor.type_as = lambda self, other=None, dtype=None: (self.to(dtype) if other is None
                                                                 else _type_as(self, other))

    pairs = json.loads(sys.argv[1])
    ids = torch.tensor([[1, 5, 9, 23, 42, 7, 2], [1, 17, 3, 64, 98, 11, 2]])
    tt = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    result = {}
    for name, (kind, ours, ref) in pairs.items():
        config = json.load(open(ours + "/config.json"))
        arch = config["architectures"][0]
        cls = getattr(txl, arch, None) or getattr(transformers, arch)
        # transformers' own conversion as it stood in memory (its save_pretrained + from_pretrained round trip
        # loses XLNet's word embedding: it keeps the tied lm_loss.weight, then ties the other way on load)
        b = torch.load(ref + "/../ref_state.pt", weights_only=True)
        mine = cls.from_pretrained(ours).eval()
        # the same construction (config, attention implementation), only the weights from transformers' own
        theirs = cls.from_pretrained(ours).eval()
        theirs.load_state_dict(b)
        a = mine.state_dict()
        diff = sorted(k for k in set(a) | set(b) if k not in a or k not in b or not torch.equal(a[k], b[k]))
        inputs = {"input_ids": ids}
        if kind in ("bert", "albert", "rembert", "funnel", "lxmert"):
            inputs["token_type_ids"] = tt
        if kind == "t5":
            inputs["decoder_input_ids"] = ids[:, :4]
        if kind == "lxmert":
            g = torch.Generator().manual_seed(1)
            inputs["visual_feats"] = torch.randn(2, 3, 16, generator=g)
            inputs["visual_pos"] = torch.rand(2, 3, 4, generator=g)
        with torch.no_grad():
            logits = mine(**inputs)[0].numpy()
            expected = theirs(**inputs)[0].numpy()
        result[name] = {"arch": arch, "tensors": len(a), "different": diff,
                        "logits_shape": list(logits.shape), "logits_max_diff": float(np.abs(logits - expected).max())}
    probe = json.loads(sys.argv[2])
    if probe:
        import tensorflow as tf
        try:
            tf.train.load_variable(*probe)
            result["__slot_probe__"] = "read"
        except Exception as exc:
            result["__slot_probe__"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result))
    '''
)


def classes() -> dict[str, tuple[str, str, str]]:
    """Fixture -> (PyTorch class, loader, its module), as modelrig's type table says the converter builds them."""
    from modelrig.convert.tf1_types import TF1_TYPES, model_class_for

    out = {}
    for name, (kind, task) in FIXTURES.items():
        t = TF1_TYPES[kind]
        out[name] = (model_class_for(t, task=task)[0], t.loader, t.loader_module)
    return out


def write_all(root: Path, *, python: Path | str) -> dict[str, int]:
    """Write every fixture under `root/<name>/` (one TensorFlow process; an h5 fixture's files in `release/`);
    returns the optimizer slots overwritten per TF1 fixture."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(python), "-c", _WRITER, str(root), json.dumps(TINY_CONFIGS), json.dumps(FIXTURES),
                           json.dumps(classes()), json.dumps(H5_FIXTURES)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"writing the TF1 fixtures failed:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_all(pairs: dict[str, tuple[str, Path, Path]], *, python: Path | str,
                slot_probe: tuple[str, str] | None = None) -> dict[str, Any]:
    """For each fixture, modelrig's output against transformers' own: differing tensors, logits' max difference.
    `slot_probe` (prefix, variable): what real TensorFlow says reading that variable, under `__slot_probe__`."""
    spec = {k: (kind, str(ours), str(ref)) for k, (kind, ours, ref) in pairs.items()}
    proc = subprocess.run([str(python), "-c", _COMPARER, json.dumps(spec), json.dumps(slot_probe)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"comparing the conversions failed:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
