"""double-bluelm: BlueLM-7B-Chat's remote-code entry point (`BlueLMForCausalLM`) as a tiny LLaMA. A test double."""

from transformers import LlamaForCausalLM

from .configuration_double import DoubleBlueLMConfig


class BlueLMForCausalLM(LlamaForCausalLM):
    config_class = DoubleBlueLMConfig
