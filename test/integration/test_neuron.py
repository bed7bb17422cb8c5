"""ZAYA1 on Trainium2 through NxDI, against Zyphra's golden outputs and our CPU reference."""
import json
import os
import time

import pytest
import torch
from safetensors.torch import load_file

from zaya1 import ArtifactError, ZayaForCausalLM
from zaya1.generation import teacher_forced_logits

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
           "def fibonacci(n):"]


def _left_padded(rows, pad=0):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, width


def test_compile_load_tiny_matches_golden(compiled_tiny, tiny_checkpoint):
    from zaya1.neuron import NeuronZayaForCausalLM

    golden = load_file(str(tiny_checkpoint / "golden.safetensors"))
    model = NeuronZayaForCausalLM.from_compiled(str(compiled_tiny), model_path=str(tiny_checkpoint))
    out = model.generate(golden["b_prompt_ids"], max_new_tokens=8, eos_token_id=[])
    assert torch.equal(out[:, 12:], golden["b_generated_ids"])
    logits = teacher_forced_logits(model, golden["b_prompt_ids"], golden["b_generated_ids"][:, :7])
    assert (logits - golden["b_step_logits"]).abs().max() < 1e-3


def test_load_refuses_other_settings(compiled_tiny, tiny_checkpoint):
    from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig

    config = ZayaInferenceConfig.load(str(compiled_tiny))
    config.neuron_config.batch_size = config.neuron_config.batch_size + 2
    with pytest.raises(ArtifactError, match="batch_size"):
        NeuronZayaForCausalLM(str(tiny_checkpoint), config).load(str(compiled_tiny))


def test_capital_of_france(neuron_real, tokenizer):
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    out = neuron_real.generate(ids, max_new_tokens=8)
    assert tokenizer.decode(out[0, ids.shape[1]:].tolist()).strip().startswith("Paris")


def test_batch_independence(neuron_real, tokenizer):
    rows = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask, width = _left_padded(rows)
    together = neuron_real.generate(ids, attention_mask=mask, max_new_tokens=16, eos_token_id=[])[:, width:]
    for i, row in enumerate(rows):
        alone = neuron_real.generate(torch.tensor([row]), max_new_tokens=16, eos_token_id=[])[:, len(row):]
        assert torch.equal(alone[0], together[i]), f"prompt {i} differs when batched"


@pytest.fixture(scope="module")
def cpu_reference(real_checkpoint):
    return ZayaForCausalLM.from_pretrained(real_checkpoint, dtype=torch.bfloat16)


def test_64_greedy_tokens_match_cpu(neuron_real, cpu_reference, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    expected = cpu_reference.generate(ids, max_new_tokens=64, eos_token_id=[])
    actual = neuron_real.generate(ids, max_new_tokens=64, eos_token_id=[])
    assert torch.equal(actual, expected)


def test_logits_within_nxdi_tolerance(neuron_real, real_checkpoint, tokenizer):
    from neuronx_distributed_inference.utils.accuracy import check_accuracy_logits_v2
    from transformers import GenerationConfig

    reference = ZayaForCausalLM.from_pretrained(real_checkpoint, dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    tokens = reference.generate(ids, max_new_tokens=32, eos_token_id=[])[:, ids.shape[1]:]
    expected = teacher_forced_logits(reference, ids, tokens[:, :-1])  # [B, N, V]
    config = GenerationConfig(do_sample=False, max_new_tokens=32, pad_token_id=0)
    check_accuracy_logits_v2(neuron_real, expected.transpose(0, 1), ids, torch.ones_like(ids), config,
                              num_tokens_to_check=32)


def test_performance_json(neuron_real, tokenizer):
    """TTFT and decode tokens/s at batch 1 and 4 (medians of 5 runs after a warm-up) -> ZAYA1_PERF_JSON."""
    records = []
    for batch in (1, 4):
        rows = [tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
        ids, mask, width = _left_padded(rows)
        ttft, rates = [], []
        for run in range(6):
            start = time.perf_counter()
            neuron_real.generate(ids, attention_mask=mask, max_new_tokens=1, eos_token_id=[])
            first = time.perf_counter() - start
            start = time.perf_counter()
            out = neuron_real.generate(ids, attention_mask=mask, max_new_tokens=65, eos_token_id=[])
            total = time.perf_counter() - start
            if run:
                ttft.append(first)
                rates.append(batch * (out.shape[1] - width - 1) / max(total - first, 1e-9))
        records += [{"metric": "ttft", "batch": batch, "prompt_len": width, "value": sorted(ttft)[2], "unit": "s"},
                    {"metric": "decode_tokens_per_s", "batch": batch, "prompt_len": width,
                     "value": sorted(rates)[2], "unit": "tok/s"}]
    path = os.environ.get("ZAYA1_PERF_JSON", "neuron-perf.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    assert all(r["value"] > 0 for r in records)
