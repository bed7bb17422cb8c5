"""Decode attention that scores the cache and the active token separately (the Neuron graph's path, no K/V
copy) against attention over the concatenated cache (the eager path, bitwise with transformers). The
split is the graph path (XLA / tracing, and bf16 under use_exact_kernels); the default CPU bf16 path
(fused SDPA) concatenates the cache itself."""

import pytest
import torch

from zaya1 import kernels
from zaya1.cca import attention, concat_cache


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("seq", [1, 3])
@pytest.mark.parametrize("exact", [True, False], ids=["graph-path", "default-path"])
def test_split_cache_matches_concatenated(dtype, tol, seq, exact, monkeypatch):
    monkeypatch.setattr(kernels, "EXACT", exact)
    gen = torch.Generator().manual_seed(seq)
    batch, nq, nkv, d, cached = 2, 4, 2, 16, 9
    q = torch.randn(batch, seq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(batch, nkv, seq, d, generator=gen).to(dtype) for _ in range(2))
    past = (torch.randn(batch, nkv, cached, d, generator=gen).to(dtype),
            torch.randn(batch, nkv, cached, d, generator=gen).to(dtype),
            torch.rand(batch, seq, cached, generator=gen) > 0.3)  # some cache positions masked off
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril().expand(batch, seq, seq)
    split = attention(q, k, v, allowed, past)
    joined = attention(q, *concat_cache(k, v, allowed, past))
    assert (split.float() - joined.float()).abs().max().item() <= tol
