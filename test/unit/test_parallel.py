"""Simulated tensor parallelism: the per-rank models of the sharding plan, run in one process with thread
collectives, compute what the unsharded model (and upstream transformers) computes, for tp = 1, 2, 4, 8 on
ZAYA1's head layout (8 query heads, 2 KV heads: tp 4 and 8 replicate KV heads). The vocabulary (157) is not a
multiple of tp, so the padded vocab-parallel embedding is exercised too."""

from __future__ import annotations

import pytest
import torch

import zaya1
from zaya1 import simulated_tp
from zaya1.sharding import neuron_state_dict, rank_state_dict, rank_state_dicts, split_neuron_state_dict
from zaya1.simulated_tp import SimulatedTP
from zaya_testlib import TOL, max_diff

pytestmark = pytest.mark.usefixtures("inference")

TPS = [1, 2, 4, 8]
VOCAB = 157


@pytest.fixture(scope="module")
def base(tiny):
    return tiny("gqa8x2", vocab_size=VOCAB)


@pytest.fixture(scope="module", params=TPS, ids=lambda tp: f"tp{tp}")
def sharded(request, base):
    tp = request.param
    model = simulated_tp.from_pretrained(base.path, dtype=torch.float32, tp_degree=tp)
    assert isinstance(model, SimulatedTP) == (tp > 1)
    return tp, model


def ragged_batch():
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([10, 6, 1])
    return torch.randint(3, VOCAB, (3, 16), generator=gen), lengths


def test_full_forward(base, sharded, report):
    tp, model = sharded
    ids = torch.randint(3, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    got = model(ids).logits
    assert got.shape == (2, 13, VOCAB)
    assert report(f"tp={tp} full forward vs unsharded", max_diff(got, base.ours(ids).logits)) <= TOL
    assert report(f"tp={tp} full forward vs upstream", max_diff(got, base.hf(ids).logits)) <= TOL


def test_prefill_and_decode_steps(base, sharded, report):
    tp, model = sharded
    ids, lengths = ragged_batch()
    rows = torch.tensor([2, 0, 1])
    states = {"sharded": model.new_state(3, 32), "unsharded": base.ours.new_state(3, 32)}
    runs = {"sharded": model, "unsharded": base.ours}
    logits = {k: [runs[k].prefill(ids, lengths, rows, states[k])] for k in runs}
    gen = torch.Generator().manual_seed(4)
    for k in range(5):
        nxt = torch.randint(3, VOCAB, (3, 1), generator=gen)
        for key in runs:
            logits[key].append(runs[key].decode(nxt, lengths + k, rows, states[key], kv_len=16))
    diff = max_diff(torch.stack(logits["sharded"]), torch.stack(logits["unsharded"]))
    assert report(f"tp={tp} prefill+decode vs unsharded", diff) <= TOL


def test_generate(base, sharded):
    tp, model = sharded
    ids, lengths = ragged_batch()
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    got = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    left = torch.zeros_like(ids)  # upstream wants left padding: the same prompts, padded on the other side
    for row, n in enumerate(lengths.tolist()):
        left[row, ids.shape[1] - n:] = ids[row, :n]
    left_mask = mask.flip(-1)
    expected = base.hf.generate(left, attention_mask=left_mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(got[:, ids.shape[1]:], expected[:, ids.shape[1]:])


@pytest.mark.parametrize("tp", TPS)
def test_neuron_state_dict_round_trip(base, tp):
    """canonical state dict -> one Neuron state dict -> NxD's contiguous per-rank split gives back every rank
    shard of the plan, and each shard fits its rank model's parameters exactly."""
    cfg, state_dict = base.ours.config, base.ours.state_dict()
    shards = rank_state_dicts(state_dict, cfg, tp)
    assert len(shards) == tp
    neuron = neuron_state_dict(state_dict, cfg, tp)
    model = simulated_tp.from_pretrained(base.path, dtype=torch.float32, tp_degree=tp)
    rank_models = model.ranks if tp > 1 else [model]
    for rank, shard in enumerate(shards):
        split = split_neuron_state_dict(neuron, tp, rank)
        assert split.keys() == shard.keys()
        for key, tensor in shard.items():
            assert torch.equal(split[key], tensor), key
        expected_shapes = {k: tuple(v.shape) for k, v in rank_models[rank].state_dict().items()}
        assert {k: tuple(v.shape) for k, v in shard.items()} == expected_shapes


@pytest.mark.parametrize("tp", [3, 16])
def test_unsupported_tp_is_rejected(base, tp):
    with pytest.raises(zaya1.ConfigError, match="tp_degree"):
        simulated_tp.from_pretrained(base.path, tp_degree=tp)


@pytest.mark.parametrize("rank", [-1, 2, 1.0])
def test_rank_outside_tp_is_rejected(base, rank):
    with pytest.raises(zaya1.ConfigError, match=rf"rank={rank!r} is not a rank of tp_degree=2; use 0 to 1\."):
        rank_state_dict(base.ours.state_dict(), base.ours.config, 2, rank)
