"""Decode-step FLOPs against the analytical minimum of top-1 routing, whole model and per rank."""
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zaya1 import ZayaForCausalLM
from zaya1.config import ZayaConfig
from zaya1.tools.demo import init_random_
from zaya1.sharding import rank_state_dicts

CONFIG = ZayaConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=32, num_experts=16, moe_intermediate_size=128,
                    router_hidden_size=32, max_position_embeddings=512, torch_dtype="float32")
CONTEXT = 24  # tokens already in the cache when the step runs


def analytical_flops(cfg: ZayaConfig, tokens: int, context: int, tp: int = 1) -> dict[str, int]:
    """Minimum matmul FLOPs of one decode step (2 x MACs), by part; context includes the new token."""
    h, d, nq, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    q_rank, kv_rank = nq // tp, max(nkv // tp, 1)
    channels = (q_rank + kv_rank) * d
    attention = (h * q_rank * d + 2 * h * kv_rank * d  # q, k, v projections
                 + channels * d * cfg.cca_time1  # grouped conv (the depthwise conv is elementwise)
                 + 2 * q_rank * d * context  # scores and weighted values
                 + q_rank * d * h)  # o_proj
    if nq // tp < nq // nkv:  # a rank with part of a KV group also projects the group's query mean
        attention += h * kv_rank * d
    r = cfg.router_hidden_size
    router = h * r + 2 * r * r + r * cfg.num_router_classes
    experts = 3 * h * cfg.moe_intermediate_size // tp
    lm_head = h * -(-cfg.vocab_size // tp)
    layers = cfg.num_hidden_layers
    return {k: 2 * tokens * v for k, v in
            {"attention": layers * attention, "router": layers * router, "experts": layers * experts,
             "lm_head": lm_head}.items()}


def measure(model, batch: int) -> tuple[int, dict]:
    """FLOPs of one decode step after a CONTEXT-token prefill, total and by part."""
    state = model.new_state(batch, 64)
    seq_ids = torch.arange(batch)
    ids = torch.randint(3, CONFIG.vocab_size, (batch, CONTEXT))
    model.prefill(ids, torch.full((batch,), CONTEXT), seq_ids, state)
    with FlopCounterMode(display=False) as counter:
        model.decode(ids[:, :1], torch.full((batch,), CONTEXT), seq_ids, state, kv_len=CONTEXT)
    counts = counter.get_flop_counts()

    def part(name):
        return sum(sum(v.values()) for k, v in counts.items() if re.search(rf"\.layers\.\d+\.{name}$", k))

    parts = {"attention": part("self_attn"), "router": part("mlp.router"), "experts": part("mlp.experts")}
    return counter.get_total_flops(), parts


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return init_random_(ZayaForCausalLM(CONFIG), seed=1).eval()


@pytest.mark.parametrize("batch", [1, 4])
def test_decode_flops_within_1_2x_of_minimum(model, batch, record_property):
    with torch.inference_mode():
        total, parts = measure(model, batch)
    minimum = analytical_flops(CONFIG, batch, CONTEXT + 1)
    ratio = total / sum(minimum.values())
    print(f"decode FLOPs batch {batch}: measured {total}, analytical minimum {sum(minimum.values())}, "
          f"ratio {ratio:.3f}")
    record_property("flop_ratio", ratio)
    assert 0.98 <= ratio <= 1.2
    assert parts["experts"] == minimum["experts"]  # exactly one expert per token: only selected experts run


class OneRankComm:
    """Collectives seen from one rank with the others' contributions left out: shapes (so FLOPs) are those
    of the sharded run; values are not, which FLOP counts of static-shape steps do not depend on."""

    rank = 0

    def __init__(self, world_size: int):
        self.world_size = world_size

    def all_reduce(self, x):
        return x

    def all_gather(self, x, dim):
        return torch.cat([x] * self.world_size, dim=dim)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_per_rank_flops_split_by_tp(model, tp):
    rank0 = ZayaForCausalLM(CONFIG, OneRankComm(tp))
    rank0.load_state_dict(rank_state_dicts(model.state_dict(), CONFIG, tp)[0])
    with torch.inference_mode():
        _, parts = measure(rank0.eval(), 1)
        _, full = measure(model, 1)
    expected = analytical_flops(CONFIG, 1, CONTEXT + 1, tp)
    print(f"tp={tp} rank 0: attention {parts['attention'] / full['attention']:.3f} of the total "
          f"(1/tp = {1 / tp:.3f}), experts {parts['experts'] / full['experts']:.3f}")
    assert parts["experts"] * tp == full["experts"]
    # exactly 1/tp while tp <= num_kv_heads; beyond, the replicated KV head's projections are extra
    assert parts["attention"] == expected["attention"]
    if tp <= CONFIG.num_key_value_heads:
        assert parts["attention"] * tp == full["attention"]
    assert parts["router"] == full["router"]  # replicated
