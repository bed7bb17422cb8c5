"""The blockwise MoE's plan: cumulative sums by triangular matmul, the block size chosen from the token
count, and the dispatch with that automatic block size against the eager per-expert loop."""

import pytest
import torch

import zaya1
from zaya1.moe import ZayaExperts, block_size_for, cumsum_by_matmul


@pytest.mark.parametrize("tokens", [1, 5, 128, 129, 300, 1000])
def test_cumsum_by_matmul_is_exact(tokens):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randint(0, 3, (tokens, 7), generator=gen).to(torch.float32)
    assert torch.equal(cumsum_by_matmul(x), torch.cumsum(x, 0))


def test_block_size_from_the_bucket():
    # 16 experts: 128 tokens fit one block per expert (16 blocks of 128 rows: 16 weight loads); from 512
    # tokens on 256 rows (about the trn2 ridge, 667 / 2.9 = 230 rows) beat 128 (more loads) and 512 (compute)
    assert [block_size_for(t, 16) for t in (128, 512, 2048, 8192)] == [128, 256, 256, 256]
    assert block_size_for(5, 6) == 16  # fewer tokens than the smallest block


@pytest.mark.parametrize("tokens", [3, 40, 300])
def test_automatic_block_size_dispatch(tokens):
    cfg = zaya1.ZayaConfig(vocab_size=32, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, num_experts=6, moe_intermediate_size=10,
                           router_hidden_size=8)
    experts = ZayaExperts(cfg, 10)
    gen = torch.Generator().manual_seed(tokens)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=gen))
        experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=gen))
    x = torch.randn(tokens, 24, generator=gen)
    expert = torch.randint(0, 6, (tokens,), generator=gen)
    weight = torch.rand(tokens, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(experts(x, expert, weight, "blockwise"), experts(x, expert, weight, "grouped"),
                                   rtol=1e-5, atol=1e-5)
