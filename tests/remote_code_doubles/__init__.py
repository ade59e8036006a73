"""Test doubles of remote-code models (Ziya-BLIP2, Qwen-VL-Chat, MiniCPM-V/o, BlueLM) that cannot be downloaded here.

Each double is a tiny repo whose `config.json` `auto_map` points at a `modeling_*.py` shipped with it, so
`from_pretrained(dir, trust_remote_code=True)` loads it for real. Their `chat(...)` methods follow the signatures
documented on the real models' cards and are backed by a tiny, randomly initialised LLaMA. They are named
`double-*` everywhere: nothing here is, or stands in for a claim about, the real models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelrig.hub import tiny

HERE = Path(__file__).parent

#: double name -> (folder of its code, auto_map, model_type, architectures)
DOUBLES = {
    "double-bluelm": ("bluelm", {"AutoConfig": "configuration_double.DoubleBlueLMConfig",
                                 "AutoModelForCausalLM": "modeling_bluelm.BlueLMForCausalLM"}, "double-bluelm",
                      ["BlueLMForCausalLM"]),
    "double-qwen-vl": ("qwen_vl", {"AutoConfig": "configuration_double.DoubleQwenConfig",
                                   "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}, "double-qwen-vl",
                       ["QWenLMHeadModel"]),
    "double-minicpm": ("minicpm", {"AutoConfig": "configuration_double.DoubleMiniCPMConfig",
                                   "AutoModel": "modeling_minicpmv.MiniCPMV"}, "double-minicpm", ["MiniCPMV"]),
}


def build(name: str, out: Path) -> Path:
    """Write the double `name` into `out` (a tiny LLaMA's weights and tokenizer plus the double's code)."""
    out = Path(out)
    if name == "double-ziya-blip2":
        return _build_ziya_blip2(out)
    folder, auto_map, model_type, architectures = DOUBLES[name]
    tiny.write_llama_hf(out, seed=1)
    for source in (HERE / folder).glob("*.py"):
        shutil.copy(source, out / source.name)
    shutil.copy(HERE / "configuration_double.py", out / "configuration_double.py")
    config = json.loads((out / "config.json").read_text())
    config.update(auto_map=auto_map, model_type=model_type, architectures=architectures)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if name == "double-qwen-vl":
        tok = json.loads((out / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}
        tok["tokenizer_class"] = "QWenTokenizer"
        (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2, sort_keys=True))
    return out


def _build_ziya_blip2(out: Path) -> Path:
    """The visual part only (as on the Hub); the LLM is a separately written tiny LLaMA (`<out>-llm`)."""
    out.mkdir(parents=True, exist_ok=True)
    hidden = 64
    torch.manual_seed(0)
    state = {"query_tokens": torch.randn(1, 4, hidden) * 0.02,
             "vision_proj.weight": torch.randn(hidden, 3) * 0.5, "vision_proj.bias": torch.zeros(hidden)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copy(HERE / "ziya_blip2" / "modeling_ziya_blip2.py", out / "modeling_ziya_blip2.py")
    config = {"architectures": ["ZiyaBlip2ForCausalLM"], "model_type": "double-ziya-blip2",
              "auto_map": {"AutoConfig": "modeling_ziya_blip2.ZiyaBlip2Config",
                           "AutoModelForCausalLM": "modeling_ziya_blip2.ZiyaBlip2ForCausalLM"},
              "human_name": "<human>", "assistant_name": "<bot>", "num_query_tokens": 4, "hidden_size": hidden,
              "vision_config": {"image_size": 30}, "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out
