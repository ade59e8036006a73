"""The model types `transformers-cli convert` took (transformers 4.x), and which one a config describes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelrig.errors import ConversionError, UsageError

#: What a type's original release is: a TF1 checkpoint prefix, OpenAI's folder of `params_N.npy`, or XLM's pickle.
InputKind = Literal["tf_checkpoint", "npy_folder", "torch_pickle"]

#: GLUE tasks and their label counts, as `convert_xlnet_original_tf_checkpoint_to_pytorch` knew them.
XLNET_GLUE_TASKS: dict[str, int] = {"cola": 2, "mnli": 3, "mrpc": 2, "sst-2": 2, "sst2": 2, "sts-b": 1, "stsb": 1,
                                    "qqp": 2, "qnli": 2, "rte": 2, "wnli": 2}


@dataclass(frozen=True)
class Tf1Type:
    """One model type: the PyTorch class transformers' converter built and the function that loaded it."""

    name: str
    model_class: str
    loader: str
    #: Where the loader lives when transformers no longer exports it at the top level.
    loader_module: str = "transformers"
    input: InputKind = "tf_checkpoint"
    #: Config keys that only this type's configs have (the original releases' JSON has no `model_type`).
    marks: tuple[frozenset[str], ...] = field(default_factory=tuple)


def _marks(*groups: str) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(g.split()) for g in groups)


#: Every type the last `transformers-cli convert` accepted, plus electra and transfo_xl (deprecated upstream,
#: still shipped by the pinned conversion env's transformers 4.47). Order matters for detection: the first type
#: whose marks a config has wins, so specific shapes come before BERT's generic one.
TF1_TYPES: dict[str, Tf1Type] = {t.name: t for t in (
    Tf1Type("lxmert", "LxmertForPreTraining", "load_tf_weights_in_lxmert",
            loader_module="transformers.models.lxmert.modeling_lxmert", marks=_marks("l_layers x_layers r_layers")),
    Tf1Type("funnel", "FunnelModel", "load_tf_weights_in_funnel", marks=_marks("block_sizes", "block_repeats")),
    Tf1Type("transfo_xl", "TransfoXLLMHeadModel", "load_tf_weights_in_transfo_xl",
            loader_module="transformers.models.deprecated.transfo_xl.modeling_transfo_xl",
            marks=_marks("cutoffs div_val")),
    Tf1Type("xlnet", "XLNetLMHeadModel", "load_tf_weights_in_xlnet",
            marks=_marks("untie_r d_inner", "n_token d_inner")),
    Tf1Type("t5", "T5ForConditionalGeneration", "load_tf_weights_in_t5", marks=_marks("d_kv d_ff")),
    Tf1Type("rembert", "RemBertModel", "load_tf_weights_in_rembert",
            marks=_marks("input_embedding_size output_embedding_size")),
    Tf1Type("albert", "AlbertForPreTraining", "load_tf_weights_in_albert",
            marks=_marks("embedding_size num_hidden_groups", "embedding_size inner_group_num")),
    Tf1Type("electra", "ElectraForPreTraining", "load_tf_weights_in_electra"),
    Tf1Type("bert", "BertForPreTraining", "load_tf_weights_in_bert",
            marks=_marks("hidden_size intermediate_size type_vocab_size")),
    Tf1Type("gpt", "OpenAIGPTModel", "load_tf_weights_in_openai_gpt", input="npy_folder", marks=_marks("afn")),
    Tf1Type("gpt2", "GPT2Model", "load_tf_weights_in_gpt2", marks=_marks("n_embd n_layer n_head")),
    Tf1Type("xlm", "XLMWithLMHeadModel", "convert_xlm_checkpoint_to_pytorch", input="torch_pickle"),
)}


def supported() -> str:
    """The supported type names, for messages."""
    return ", ".join(sorted(TF1_TYPES))


def resolve_type(model_type: str | None, config: dict[str, Any] | None, *, config_path: Path | None) -> Tf1Type:
    """The type to convert: `model_type` when given, else the config's `model_type`, else the shape of its keys.

    Raises UsageError for a type modelrig does not convert, and when the config says nothing certain.
    """
    if model_type:
        if model_type not in TF1_TYPES:
            raise UsageError(f"--model-type {model_type}: not a convertible type; supported: {supported()}")
        return TF1_TYPES[model_type]
    where = str(config_path) if config_path else "config"
    if config is None:
        raise UsageError(f"convert tf: no config to tell the model type; pass --model-type ({supported()})")
    declared = config.get("model_type")
    if isinstance(declared, str) and declared:
        alias = {"openai-gpt": "gpt", "transfo-xl": "transfo_xl"}.get(declared, declared)
        if alias not in TF1_TYPES:
            raise UsageError(f"{where}: model_type {declared!r} is not a convertible type; supported: {supported()}")
        return TF1_TYPES[alias]
    keys = set(config)
    for t in TF1_TYPES.values():
        if any(group <= keys for group in t.marks):
            return t
    raise UsageError(f"{where}: the keys do not tell the model type; pass --model-type ({supported()})")


def read_config(path: Path) -> dict[str, Any]:
    """A config file as a dict; a file that is not a JSON object is refused naming it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: a config must be a JSON object")
    return value


def model_class_for(t: Tf1Type, *, task: str | None) -> tuple[str, dict[str, Any]]:
    """The PyTorch class the converter builds and the config fields it sets, given XLNet's fine-tuning task.

    As `convert_xlnet_original_tf_checkpoint_to_pytorch`: a GLUE task gives sequence classification with that
    task's label count, a SQuAD task question answering, none the LM head. Other types take no task.
    """
    if not task:
        return t.model_class, {}
    if t.name != "xlnet":
        raise UsageError(f"--finetuning-task: only xlnet checkpoints take one, not {t.name}")
    task = task.lower()
    if task in XLNET_GLUE_TASKS:
        return "XLNetForSequenceClassification", {"finetuning_task": task, "num_labels": XLNET_GLUE_TASKS[task]}
    if "squad" in task:
        return "XLNetForQuestionAnswering", {"finetuning_task": task}
    raise UsageError(f"--finetuning-task {task}: not a GLUE task ({', '.join(sorted(XLNET_GLUE_TASKS))}) or squad")
