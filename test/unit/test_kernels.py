"""Kernels written without data-dependent or convolution primitives, against plain references:
ManualConv1d vs torch.nn.Conv1d, every expert-dispatch path vs a per-token Python loop, and the q/k L2 norm
vs upstream transformers'."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import zaya1
from zaya1.cca import ManualConv1d, l2_normalize
from zaya1.moe import ZayaExperts

from zaya_testlib import upstream

pytestmark = pytest.mark.usefixtures("inference")


# ---------------------------------------------------------------------------------------------- conv
@pytest.mark.parametrize("kernel", [1, 2, 3])
@pytest.mark.parametrize("channels,groups", [(24, 24), (24, 6), (24, 3), (20, 1), (12, 12)],
                         ids=["depthwise", "grouped6", "grouped3", "dense", "depthwise12"])
@pytest.mark.parametrize("bias", [True, False])
def test_manual_conv1d_equals_nn_conv1d(channels, groups, kernel, bias):
    gen = torch.Generator().manual_seed(channels * 100 + groups * 10 + kernel)
    ref = torch.nn.Conv1d(channels, channels, kernel, groups=groups, bias=bias, padding=0)
    ours = ManualConv1d(channels, kernel, groups=groups, bias=bias)
    assert ours.weight.shape == ref.weight.shape
    with torch.no_grad():
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=gen))
        ours.weight.copy_(ref.weight)
        if bias:
            ref.bias.copy_(torch.randn(channels, generator=gen))
            ours.bias.copy_(ref.bias)
    for batch, time in itertools.product((1, 3), (kernel, kernel + 1, 7, 19)):
        x = torch.randn(batch, channels, time, generator=gen)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels,groups", [(320, 320), (320, 10), (1280, 10)], ids=["depthwise", "grouped",
                                                                                     "zaya1-grouped"])
def test_manual_conv1d_rounds_like_nn_conv1d_in_half_precision(channels, groups, dtype):
    """nn.Conv1d in bf16/fp16 accumulates in fp32 (bias included) and rounds once; rounding every product
    instead flips ~30% of the outputs by an ulp, enough to change bf16 routing decisions downstream."""
    gen = torch.Generator().manual_seed(channels + groups)
    ref = torch.nn.Conv1d(channels, channels, 2, groups=groups).to(dtype)
    ours = ManualConv1d(channels, 2, groups=groups).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=gen) / ref.weight.shape[1] ** 0.5)
        ref.bias.copy_(torch.randn(channels, generator=gen) * 0.1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 33, generator=gen).to(dtype)
    got, expected = ours(x), ref(x)
    assert got.dtype == dtype
    mismatched = (got != expected).float().mean().item()
    assert mismatched <= 1e-2, f"{mismatched:.1%} of the outputs differ from nn.Conv1d"
    ulp = torch.finfo(dtype).eps * expected.float().abs().clamp_min(1.0)  # fp32 summation order: at most 1 ulp
    assert ((got.float() - expected.float()).abs() <= ulp).all()


# ---------------------------------------------------------------------------------------------- experts
NUM_EXPERTS, HIDDEN, INTERMEDIATE = 6, 24, 10


def make_experts(block_size: int = 16, seed: int = 0) -> ZayaExperts:
    cfg = zaya1.ZayaConfig(vocab_size=32, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, num_experts=NUM_EXPERTS,
                           moe_intermediate_size=INTERMEDIATE, router_hidden_size=8)
    experts = ZayaExperts(cfg, INTERMEDIATE, block_size=block_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=gen) / HIDDEN ** 0.5)
        experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=gen) / INTERMEDIATE ** 0.5)
    return experts


def naive(experts: ZayaExperts, x, expert, weight) -> torch.Tensor:
    """One token at a time: weight * down @ (silu(gate) * up), gate = the first half of gate_up's rows."""
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        e = int(expert[t])
        gate_up = experts.gate_up_proj[e] @ x[t]
        gate, up = gate_up[:INTERMEDIATE], gate_up[INTERMEDIATE:]
        out[t] = weight[t] * (experts.down_proj[e] @ (F.silu(gate) * up))
    return out


def assignment(kind: str, tokens: int, block: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":  # every expert likely used
        return torch.randint(0, NUM_EXPERTS, (tokens,), generator=gen)
    if kind == "some_unused":  # experts 1, 2 and 4 receive nothing
        return torch.tensor([0, 3, 5])[torch.randint(0, 3, (tokens,), generator=gen)]
    if kind == "one_expert":
        return torch.full((tokens,), NUM_EXPERTS - 1)
    if kind == "worst_padding":  # every group needs one more block than its share: the static bound is tight
        counts = [block * (tokens // (block * NUM_EXPERTS)) + 1] * NUM_EXPERTS
        return torch.cat([torch.full((c,), e) for e, c in enumerate(counts)])[torch.randperm(sum(counts),
                                                                                             generator=gen)]
    raise ValueError(kind)


KINDS = ["random", "some_unused", "one_expert", "worst_padding"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", [1, 3, 5, 17, 40])
@pytest.mark.parametrize("block", [1, 4, 16])
def test_blockwise_dispatch(block, tokens, kind):
    gen = torch.Generator().manual_seed(block * 1000 + tokens)
    experts = make_experts(block_size=block)
    expert = assignment(kind, tokens, block, gen)
    tokens = len(expert)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    weight = torch.rand(tokens, generator=gen)
    torch.testing.assert_close(experts(x, expert, weight, "blockwise"), naive(experts, x, expert, weight),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["gather", "grouped"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", [1, 2, 9, 33])
def test_gather_and_grouped_dispatch(dispatch, tokens, kind):
    gen = torch.Generator().manual_seed(tokens)
    experts = make_experts()
    expert = assignment(kind, tokens, 4, gen)
    tokens = len(expert)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    weight = torch.rand(tokens, generator=gen)
    torch.testing.assert_close(experts(x, expert, weight, dispatch), naive(experts, x, expert, weight),
                               rtol=1e-5, atol=1e-5)


def test_zero_weight_tokens_give_zero():
    """Skipped tokens reach the experts with weight 0 (and expert index clamped): their output must be 0."""
    experts = make_experts(block_size=4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, HIDDEN, generator=gen)
    expert = torch.randint(0, NUM_EXPERTS, (9,), generator=gen)
    weight = torch.rand(9, generator=gen)
    weight[::2] = 0
    for dispatch in ("gather", "blockwise", "grouped"):
        out = experts(x, expert, weight, dispatch)
        assert torch.equal(out[::2], torch.zeros_like(out[::2])), dispatch
        assert out[1::2].abs().min() > 0, dispatch


# ---------------------------------------------------------------------------------------------- q/k L2 norm
def test_l2_normalize_in_fp32_in_neuron_graphs_only():
    """bf16 q/k are L2-normalised eagerly as upstream transformers' ZayaQKNorm does in bf16, bit for bit; in a
    traced graph (Neuron) as it does in float32, rounded once to bf16 (test/nxdi_cpu/test_lowering.py checks the
    lowered bf16 graph: no bf16 reduce over head_dim)."""
    from transformers.models.zaya.modeling_zaya import ZayaQKNorm

    qk_norm = ZayaQKNorm(upstream().ZayaConfig(head_dim=128, num_key_value_heads=2))
    gen = torch.Generator().manual_seed(5)
    q = (torch.randn(2, 7, 8, 128, generator=gen) * 3).to(torch.bfloat16)
    k = torch.randn(2, 7, 2, 128, generator=gen).to(torch.bfloat16)
    eager, in_fp32 = qk_norm(q, k)[0], qk_norm(q.float(), k.float())[0].to(torch.bfloat16)
    assert not torch.equal(eager, in_fp32)
    assert torch.equal(l2_normalize(q, 128 ** 0.5), eager)
    traced = torch.jit.trace(lambda x: l2_normalize(x, 128 ** 0.5), (q,), check_trace=False)
    assert torch.equal(traced(q), in_fp32)
