"""double-ziya-blip2: Ziya-BLIP2-14B-Visual's documented interface on tiny parts. A test double.

As on the real model card, the language model is not part of this repo: the caller loads a LLaMA and assigns
`model.language_model`. `chat(tokenizer, pixel_values, query, previous_querys, previous_outputs, **generate_kwargs)`
builds the `<human>:...\\n<bot>:` conversation, prepends visual query embeddings computed from the pixels, and
generates with the assigned language model (greedily, so tests are deterministic; the sampling arguments
the caller passed are recorded in `last_call`).
"""

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class _Vision(PretrainedConfig):
    model_type = "double-ziya-vision"


class ZiyaBlip2Config(PretrainedConfig):
    model_type = "double-ziya-blip2"

    def __init__(self, vision_config=None, num_query_tokens=4, hidden_size=64, human_name="<human>",
                 assistant_name="<bot>", **kwargs):
        super().__init__(**kwargs)
        self.vision_config = _Vision(**(vision_config or {"image_size": 30}))
        self.num_query_tokens = num_query_tokens
        self.hidden_size = hidden_size
        self.human_name = human_name
        self.assistant_name = assistant_name

    def to_dict(self):
        out = super().to_dict()
        out["vision_config"] = {"image_size": self.vision_config.image_size}
        return out


class ZiyaBlip2ForCausalLM(PreTrainedModel):
    config_class = ZiyaBlip2Config

    def __init__(self, config, language_model=None):
        super().__init__(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        self.vision_proj = nn.Linear(3, config.hidden_size)
        self.language_model = language_model

    def _init_weights(self, module):
        pass

    def visual_prefix(self, pixel_values):
        colour = pixel_values.float().mean(dim=(2, 3))  # [batch, 3]
        return self.query_tokens + self.vision_proj(colour.to(self.vision_proj.weight.dtype))[:, None, :]

    @torch.no_grad()
    def chat(self, tokenizer, pixel_values, query, previous_querys, previous_outputs, **generate_kwargs):
        if self.language_model is None:
            raise ValueError("assign model.language_model (the separately loaded Ziya LLaMA) first")
        human, bot = self.config.human_name, self.config.assistant_name
        prompt = "".join(f"{human}:{q}\n{bot}:{a}\n" for q, a in zip(previous_querys, previous_outputs, strict=True))
        prompt += f"{human}:{query}\n{bot}:"
        self.last_call = {"prompt": prompt, "previous_querys": list(previous_querys),
                          "previous_outputs": list(previous_outputs), "generate_kwargs": dict(generate_kwargs)}
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(self.language_model.device)
        embeds = self.language_model.get_input_embeddings()(ids)
        visual = self.visual_prefix(pixel_values.to(self.vision_proj.weight.device)).to(embeds.dtype)
        inputs = torch.cat([visual.to(embeds.device), embeds], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        options = {"max_new_tokens": generate_kwargs.get("max_new_tokens", 16),
                   "repetition_penalty": generate_kwargs.get("repetition_penalty", 1.0)}
        out = self.language_model.generate(inputs_embeds=inputs, attention_mask=mask, do_sample=False, **options)
        return tokenizer.decode(out[0], skip_special_tokens=True)
