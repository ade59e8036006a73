"""Config classes of the tiny LLaMA-backed remote-code doubles (test doubles, not the real models)."""

from transformers import LlamaConfig


class DoubleBlueLMConfig(LlamaConfig):
    model_type = "double-bluelm"


class DoubleQwenConfig(LlamaConfig):
    model_type = "double-qwen-vl"


class DoubleMiniCPMConfig(LlamaConfig):
    model_type = "double-minicpm"
