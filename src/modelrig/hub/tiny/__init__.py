"""Deterministic tiny real models of the real architectures, for the local hub, the demo and the tests.

`llama` writes LLaMA in Meta's and HF's layouts and a Ziya-style delta, `vision` BLIP-2 and LLaVA, `bert` TF1 and
h5 BERT checkpoints (in a TensorFlow env). Every file is byte-stable for a given seed.
"""

from modelrig.hub.tiny.bert import TINY_BERT, write_bert_tf, write_bert_tf1
from modelrig.hub.tiny.llama import (
    ZIYA_ADDED_TOKENS,
    ZIYA_FULL_KEYS,
    llama_hf_state,
    meta_split_dim,
    save_bin_shards,
    sentencepiece_model,
    write_llama_hf,
    write_llama_meta,
    write_ziya_delta,
)
from modelrig.hub.tiny.vision import LLAVA_CHAT_TEMPLATE, write_blip2, write_llava

__all__ = [
    "LLAVA_CHAT_TEMPLATE", "TINY_BERT", "ZIYA_ADDED_TOKENS", "ZIYA_FULL_KEYS", "llama_hf_state", "meta_split_dim",
    "save_bin_shards", "sentencepiece_model", "write_bert_tf", "write_bert_tf1", "write_blip2", "write_llama_hf",
    "write_llama_meta", "write_llava", "write_ziya_delta",
]
