"""Parity with upstream transformers (``transformers.ZayaForCausalLM``, eager, float32) on tiny random
checkpoints in the Hugging Face layout: full-sequence logits, padded batches, every cached decode step and
greedy generation."""

from __future__ import annotations

import pytest
import torch

from zaya_testlib import TINY_CONFIGS, TOL, max_diff

CONFIGS = list(TINY_CONFIGS)


def prompts(vocab: int, lengths: list[int], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]


def pad(rows: list[torch.Tensor], side: str, value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols], mask[i, cols] = r, 1
    return ids, mask


def routed_experts(model, ids: torch.Tensor) -> set[int]:
    """Experts upstream's routers choose for ``ids`` (a precondition: routing must not be trivial)."""
    chosen = set()
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out: chosen.update(out[2].flatten().tolist()))
             for layer in model.model.layers]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return chosen


@pytest.mark.parametrize("name", CONFIGS)
def test_full_sequence_logits(tiny, report, name):
    m = tiny(name)
    ids = torch.stack(prompts(m.config.vocab_size, [14, 14, 14], seed=1))
    assert len(routed_experts(m.hf, ids)) >= 3, "routing is (nearly) trivial: the test would prove little"
    expected = m.hf(ids).logits
    got = m.ours(ids).logits
    assert got.dtype == torch.float32
    assert report(f"{name} full-sequence", max_diff(got, expected)) <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", CONFIGS)
def test_padded_batch_logits(tiny, report, name, side):
    m = tiny(name)
    ids, mask = pad(prompts(m.config.vocab_size, [13, 9, 5, 1], seed=2), side)
    # as transformers' generate does for padded prompts: positions count real tokens only
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    expected = m.hf(ids, attention_mask=mask, position_ids=positions).logits
    got = m.ours(ids, attention_mask=mask, position_ids=positions).logits
    valid = mask.bool()
    assert report(f"{name} {side}-padded batch", max_diff(got[valid], expected[valid])) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decode_steps(tiny, report, name):
    """Prefill then one-token decode steps with our static state vs upstream's own cache, step by step.
    Both are fed upstream's greedy tokens, so a near-tie cannot make the sequences diverge."""
    m = tiny(name)
    ids = torch.stack(prompts(m.config.vocab_size, [11, 11], seed=3))  # longer than any sliding window
    steps = 8
    out = m.hf(ids, use_cache=True)
    hf_logits, cache = [out.logits[:, -1]], out.past_key_values
    tokens = [hf_logits[-1].argmax(-1)]
    for _ in range(steps - 1):
        out = m.hf(tokens[-1][:, None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        hf_logits.append(out.logits[:, -1])
        tokens.append(hf_logits[-1].argmax(-1))

    state = m.ours.new_state(max_batch=2, max_seq=32)
    seq_ids = torch.arange(2)
    ours_logits = [m.ours.prefill(ids, torch.tensor([11, 11]), seq_ids, state)]
    for k in range(steps - 1):
        positions = torch.full((2,), 11 + k)
        ours_logits.append(m.ours.decode(tokens[k][:, None], positions, seq_ids, state))
    diffs = [max_diff(o, h) for o, h in zip(ours_logits, hf_logits)]
    print(f"{name} per-step max|dlogit|: " + " ".join(f"{d:.2g}" for d in diffs))
    assert report(f"{name} prefill+decode steps", max(diffs)) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_generate_greedy(tiny, name):
    """Ragged prompts, left-padded as transformers expects; our generate must give the same tokens."""
    m = tiny(name)
    ids, mask = pad(prompts(m.config.vocab_size, [12, 7, 3], seed=4), "left")
    expected = m.hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    got = m.ours.generate(ids, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(got, expected), (got, expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_generate_stops_at_eos_like_upstream(tiny, name):
    """With an EOS id the first prompt produces early, both pad after it and stop when all rows are done."""
    m = tiny(name)
    ids, mask = pad(prompts(m.config.vocab_size, [9, 6], seed=5), "left")
    free = m.hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    eos = int(free[0, ids.shape[1] + 2])  # row 0's third new token
    expected = m.hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos)
    got = m.ours.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos)
    assert torch.equal(got, expected), (got, expected)
