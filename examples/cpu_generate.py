"""Short CPU example: load a checkpoint (either layout) and generate for two prompts of different lengths.

    python examples/cpu_generate.py /path/to/ZAYA1-checkpoint      # a real checkpoint with its tokenizer
    python examples/cpu_generate.py                                 # the embedded random demo model
"""
import sys

import torch

from zaya1 import ZayaForCausalLM
from zaya1.generation import Tokenizer

if len(sys.argv) > 1:
    model = ZayaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
    tokenizer = Tokenizer.from_pretrained(sys.argv[1])
else:
    from zaya1.tools.demo import demo_model, demo_tokenizer

    model, tokenizer = demo_model(), demo_tokenizer()

prompts = ["The capital of France is", "Write a haiku about the sea:"]
rows = [tokenizer.encode(p) for p in prompts]
width = max(map(len, rows))
pad = model.config.pad_token_id or 0
input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left padding, as in transformers
attention_mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=16)
for prompt, row in zip(prompts, out[:, width:]):
    print(repr(prompt), "->", repr(tokenizer.decode(row.tolist())))
