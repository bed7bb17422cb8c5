"""The native compile route as far as public packages reach (zaya1.vllm_neuron): every bucket's forward through
``torch.compile(fullgraph=True, dynamic=False)`` with no graph break and no recompile after warm-up (Dynamo's
own counters, and serving under ``fail_on_recompile`` as the plugin's runner does), and each bucket's
functionalised graph imported to StableHLO by torch-mlir with static shapes and no custom call. Decode
context buckets up to 32k: what a decode step gathers grows with its context bucket, by exactly the K/V of
the added positions."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from zaya1.vllm_neuron import emulate
from zaya1.vllm_neuron.runner import load_ranks
from zaya1.vllm_neuron.stablehlo import Bucket, export_stablehlo, inventory, weights
from zaya_testlib import TOL, max_diff

pytestmark = pytest.mark.usefixtures("inference")


def test_compiled_serving_has_no_graph_break_or_recompile(tiny, report):
    m = tiny("sliding")
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, m.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 19, 9)]
    torch._dynamo.reset()
    counters.clear()
    results = emulate(m.path, prompts, [6, 3, 5], block_size=8, prefill_bucket=8, max_num_seqs=2,
                      max_model_len=32, context_buckets=[16, 32], compile=True)
    assert dict(counters["graph_break"]) == {}
    # one graph per bucket: the prefill bucket, and decode batches {1, 2} x context buckets {16, 32}
    assert counters["stats"]["unique_graphs"] == 1 + 2 * 2
    for prompt, result in zip(prompts, results):  # served under fail_on_recompile: a recompile would raise
        ref = m.hf(torch.tensor([prompt + result.tokens[:-1]])).logits[0, len(prompt) - 1:]
        assert result.tokens == ref.argmax(-1).tolist()
        assert report("native compiled (aot_eager) vs upstream", max_diff(result.logits, ref)) <= TOL


@pytest.fixture(scope="module")
def model(tiny):
    return load_ranks(tiny("gqa4x2").path, 1, None)[0]


@pytest.fixture(scope="module")
def graphs(model):
    pytest.importorskip("torch_mlir", reason="torch-mlir (the test extra) imports graphs to StableHLO")
    buckets = [Bucket(1, 32, 256), Bucket(1, 128, 256)] + [Bucket(rows, 1, context) for rows in (1, 4)
                                                         for context in (256, 4096, 32768)]
    return {b: inventory(export_stablehlo(model, b), len(weights(model))) for b in buckets}


def test_every_bucket_lowers_to_static_stablehlo(graphs, report):
    for bucket, inv in graphs.items():
        print(f"{bucket.name}: {sum(inv.ops.values())} ops, {inv.ops['dot_general']} dot_general, "
              f"{inv.ops['gather']} gather, {inv.ops['scatter']} scatter, bytes read {inv.bytes_read:,} "
              f"(weights {inv.weight_bytes:,}, gathered {inv.gathered_bytes:,})")
        assert inv.custom_calls == 0, f"{bucket.name}: custom_call (a host fallback or opaque kernel)"
        assert inv.dynamic_dims == 0, f"{bucket.name}: dynamic dimensions"
        assert inv.ops["dot_general"] > 0 and inv.ops["scatter"] > 0  # the products and the page writes


def test_decode_bytes_grow_with_the_context_bucket_only(graphs, model):
    """Between two context buckets a decode step reads exactly the K/V of the added positions more
    (2 x layers x rows x kv_heads x positions x head_dim x bytes) plus their block ids; weights unchanged."""
    cfg, shard = model.config, model.lm.model.shard
    for rows in (1, 4):
        small, mid, big = (graphs[Bucket(rows, 1, c)] for c in (256, 4096, 32768))
        assert small.weight_bytes == mid.weight_bytes == big.weight_bytes
        for a, b, added in ((small, mid, 4096 - 256), (mid, big, 32768 - 4096)):
            kv = 2 * cfg.num_hidden_layers * rows * shard.kv_heads * added * cfg.head_dim * model.dtype.itemsize
            grown = b.gathered_bytes - a.gathered_bytes
            assert kv <= grown <= kv * 1.1, (rows, added, grown, kv)
