"""double-qwen-vl's tokenizer: a LLaMA sentencepiece tokenizer with Qwen-VL's `from_list_format`. A test double."""

from transformers import LlamaTokenizer


class QWenTokenizer(LlamaTokenizer):
    def from_list_format(self, list_format):
        """`[{"image": path}, {"text": ...}]` to `Picture 1: <img>path</img>\\ntext`, as Qwen-VL documents."""
        text, images = "", 0
        for item in list_format:
            if "image" in item:
                images += 1
                text += f"Picture {images}: <img>{item['image']}</img>\n"
            elif "text" in item:
                text += item["text"]
        return text
