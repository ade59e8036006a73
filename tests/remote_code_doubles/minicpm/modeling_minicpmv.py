"""double-minicpm: MiniCPM-V 2.6 / MiniCPM-o 2.6's documented `chat(image, msgs, tokenizer, ...)` on a tiny LLaMA.

A test double. `msgs` is `[{"role": "user"|"assistant", "content": [PIL images..., text]}]`; images become
`(<image>./</image>)` placeholders and steer the answer through a prefix token. `init_vision`, `init_audio` and
`init_tts` are accepted as the real MiniCPM-o takes them, and recorded.
"""

import torch
from PIL import Image
from transformers import LlamaForCausalLM

from .configuration_double import DoubleMiniCPMConfig


class MiniCPMV(LlamaForCausalLM):
    config_class = DoubleMiniCPMConfig

    def __init__(self, config, init_vision=True, init_audio=True, init_tts=True):
        super().__init__(config)
        self.init_flags = {"init_vision": init_vision, "init_audio": init_audio, "init_tts": init_tts}

    def chat(self, image, msgs, tokenizer, processor=None, vision_hidden_states=None, max_new_tokens=2048,
             min_new_tokens=0, sampling=True, max_inp_length=8192, system_prompt="", stream=False,
             max_slice_nums=None, use_image_id=None, **kwargs):
        prompt, prefix = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else "", []
        for message in msgs:
            parts = []
            for item in message["content"]:
                if isinstance(item, Image.Image):
                    parts.append("(<image>./</image>)")
                    prefix.append(int(sum(item.convert("RGB").resize((4, 4)).getdata(), ())[0]) % 300 + 3)
                else:
                    parts.append(str(item))
            prompt += f"<|im_start|>{message['role']}\n" + "\n".join(parts) + "<|im_end|>\n"
        prompt += "<|im_start|>assistant\n"
        self.last_prompt = prompt
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        if prefix:
            ids = torch.cat([torch.tensor([prefix]), ids], 1)
        options = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
        if sampling:
            options.update(do_sample=True, temperature=kwargs.get("temperature", 0.7), top_p=kwargs.get("top_p", 0.8))
        out = self.generate(ids.to(self.device), **options)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return iter([answer]) if stream else answer
