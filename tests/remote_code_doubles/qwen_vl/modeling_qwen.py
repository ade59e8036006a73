"""double-qwen-vl: Qwen-VL-Chat's documented remote-code interface on a tiny LLaMA. A test double.

`chat(tokenizer, query, history, system=...)` returns `(response, history)`; `chat_stream(...)` yields the
response so far. Images arrive as `<img>path</img>` in the query (from `tokenizer.from_list_format`); each
referenced image is opened and its pixels steer the answer through a prefix token, so a wrong or missing
image changes or breaks the reply.
"""

import re
import threading

import torch
from PIL import Image
from transformers import LlamaForCausalLM, TextIteratorStreamer

from .configuration_double import DoubleQwenConfig

IMAGE = re.compile(r"<img>(.*?)</img>")


class QWenLMHeadModel(LlamaForCausalLM):
    config_class = DoubleQwenConfig

    def _prompt(self, query, history, system):
        text = f"<|im_start|>system\n{system}<|im_end|>\n"
        for q, a in history or []:
            text += f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
        return text + f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"

    def _inputs(self, tokenizer, query, history, system):
        prompt = self._prompt(query, history, system)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        prefix = []
        for path in IMAGE.findall(prompt):
            with Image.open(path) as image:
                prefix.append(int(sum(image.convert("RGB").resize((4, 4)).getdata(), ())[0]) % 300 + 3)
        if prefix:
            ids = torch.cat([torch.tensor([prefix]), ids], 1)
        self.last_prompt = prompt
        return ids.to(self.device)

    @staticmethod
    def _generation(kwargs):
        options = {"max_new_tokens": kwargs.get("max_new_tokens", 16)}
        if kwargs.get("do_sample"):
            options.update(do_sample=True, temperature=kwargs.get("temperature", 1.0), top_p=kwargs.get("top_p", 1.0))
        return options

    def chat(self, tokenizer, query, history=None, system="You are a helpful assistant.", **kwargs):
        ids = self._inputs(tokenizer, query, history, system)
        out = self.generate(ids, **self._generation(kwargs))
        response = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return response, [*(history or []), (query, response)]

    def chat_stream(self, tokenizer, query, history=None, system="You are a helpful assistant.", **kwargs):
        ids = self._inputs(tokenizer, query, history, system)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=self.generate, args=(ids,),
                                  kwargs=dict(streamer=streamer, **self._generation(kwargs)))
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()
