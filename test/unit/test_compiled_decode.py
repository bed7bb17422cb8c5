"""The compiled decode step (compile_decode: each layer through torch.compile, one graph for every layer and
kv_len bucket) computes what the eager step computes, and is the default where it was measured to pay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zaya1 import ZayaForCausalLM, model as model_module

TINY_HF = Path(__file__).parents[2] / "test" / "data" / "golden" / "zaya1-original-tiny" / "hf-layout"


@pytest.mark.slow  # compiles (about 20 s alone on 2 cores)
def test_compiled_decode_equals_eager_in_float32():
    model = ZayaForCausalLM.from_pretrained(TINY_HF, dtype=torch.float32)
    prompt = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=70, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    eager = model.compile_decode(False).generate(prompt, **kwargs)
    torch._dynamo.reset()
    compiled = model.compile_decode(True).generate(prompt, **kwargs)  # 70 steps: kv_len buckets 64 and 128
    assert torch.equal(compiled.sequences, eager.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(compiled.logits, eager.logits)) <= 1e-5
    # the first layer (no router state yet) and the others: two graphs, whatever the depth and kv_len
    assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(model_module.layer_step.__code__)) == 2


def test_compiled_by_default_where_it_pays(monkeypatch):
    shallow = ZayaForCausalLM.from_pretrained(TINY_HF)
    layers = model_module.COMPILE_MIN_LAYERS
    deep = ZayaForCausalLM.empty(shallow.config.replace(num_hidden_layers=layers, layer_types=["full"] * layers))
    assert deep.decode_compiled("cpu") and not shallow.decode_compiled("cpu")
    assert not deep.compile_decode(False).decode_compiled("cpu") and shallow.compile_decode(True).decode_compiled("cpu")
    deep.compile_decode(None)
    monkeypatch.setenv("ZAYA1_COMPILE_DECODE", "0")
    assert not deep.decode_compiled("cpu")
