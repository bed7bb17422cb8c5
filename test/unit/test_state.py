"""The static decode state (ZayaState) and the step functions prefill / decode: every cached step equals a
full-sequence forward, right-padded ragged prefill continues exactly, rows (seq_ids) never interfere."""

from __future__ import annotations

import pytest
import torch

from zaya_testlib import TOL, max_diff

pytestmark = pytest.mark.usefixtures("inference")

NAMES = ["gqa8x2", "sliding"]


def tokens(vocab: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def upstream_logits(m, seq: torch.Tensor) -> torch.Tensor:
    """Upstream transformers' full-sequence logits of one sequence [len, V] (the independent reference)."""
    return m.hf(seq[None]).logits[0]


def snapshot(state) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in state.named_buffers()}


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_full_forward_at_every_step(tiny, report, name):
    m = tiny(name)
    seq = tokens(m.config.vocab_size, 20, seed=1)
    prompt = 6
    full_upstream = upstream_logits(m, seq)
    full_ours = m.ours(seq[None]).logits[0]
    state = m.ours.new_state(max_batch=1, max_seq=32)
    rows = torch.tensor([0])
    steps = [m.ours.prefill(seq[None, :prompt], torch.tensor([prompt]), rows, state)[0]]
    for pos in range(prompt, len(seq) - 1):
        steps.append(m.ours.decode(seq[None, pos:pos + 1], torch.tensor([pos]), rows, state)[0])
    steps = torch.stack(steps)
    assert report(f"{name} decode vs upstream full forward", max_diff(steps, full_upstream[prompt - 1:-1])) <= TOL
    assert max_diff(steps, full_ours[prompt - 1:-1]) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_kv_len_bucket_does_not_change_decode(tiny, name):
    """Attending to a smaller static bucket of the cache (>= the position) gives the same logits."""
    m = tiny(name)
    seq = tokens(m.config.vocab_size, 12, seed=2)
    results = []
    for kv_len in (None, 64, 16, 12):
        state = m.ours.new_state(max_batch=1, max_seq=64)
        rows = torch.tensor([0])
        m.ours.prefill(seq[None, :11], torch.tensor([11]), rows, state)
        results.append(m.ours.decode(seq[None, 11:12], torch.tensor([11]), rows, state, kv_len=kv_len))
    for other in results[1:]:
        assert max_diff(other, results[0]) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_right_padded_prefill_then_decode_equals_each_alone(tiny, report, name):
    """Ragged prompts right-padded into one prefill (pads are random junk tokens, not 0), then decode steps at
    per-row positions: every row's logits equal upstream's forward of that sequence alone."""
    m = tiny(name)
    vocab = m.config.vocab_size
    lengths = [9, 4, 1, 13]
    width, steps = 16, 5
    seqs = [tokens(vocab, n + steps, seed=10 + i) for i, n in enumerate(lengths)]
    ids = tokens(vocab, len(lengths) * width, seed=99).view(len(lengths), width)  # junk in the pad slots
    for row, (seq, n) in enumerate(zip(seqs, lengths)):
        ids[row, :n] = seq[:n]
    state = m.ours.new_state(max_batch=len(lengths), max_seq=32)
    rows = torch.arange(len(lengths))
    got = [m.ours.prefill(ids, torch.tensor(lengths), rows, state)]
    for k in range(steps - 1):
        nxt = torch.stack([seq[n + k] for seq, n in zip(seqs, lengths)])[:, None]
        got.append(m.ours.decode(nxt, torch.tensor(lengths) + k, rows, state))
    got = torch.stack(got, dim=1)  # [B, steps, V]
    worst = 0.0
    for row, (seq, n) in enumerate(zip(seqs, lengths)):
        expected = upstream_logits(m, seq[:n + steps - 1])[n - 1:]
        worst = max(worst, max_diff(got[row], expected))
    assert report(f"{name} ragged right-padded prefill+decode vs each alone", worst) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_steps_never_touch_other_rows(tiny, name):
    m = tiny(name)
    vocab = m.config.vocab_size
    state = m.ours.new_state(max_batch=4, max_seq=32)
    m.ours.prefill(tokens(vocab, 4 * 8, seed=3).view(4, 8), torch.tensor([8, 5, 7, 2]), torch.arange(4), state)
    for rows, positions in (([1], [5]), ([3, 0], [2, 8])):
        before = snapshot(state)
        rows_t = torch.tensor(rows)
        m.ours.decode(tokens(vocab, len(rows), seed=4)[:, None], torch.tensor(positions), rows_t, state)
        others = [r for r in range(4) if r not in rows]
        for buf_name, buf in state.named_buffers():
            assert torch.equal(buf[:, others], before[buf_name][:, others]), f"{buf_name} of rows {others} changed"
            assert not torch.equal(buf[:, rows], before[buf_name][:, rows]), f"{buf_name} of rows {rows} unchanged"
    before = snapshot(state)  # a prefill into one row leaves the others alone too
    m.ours.prefill(tokens(vocab, 6, seed=5)[None], torch.tensor([6]), torch.tensor([2]), state)
    for buf_name, buf in state.named_buffers():
        assert torch.equal(buf[:, [0, 1, 3]], before[buf_name][:, [0, 1, 3]]), buf_name


@pytest.mark.parametrize("name", NAMES)
def test_prefill_into_rows_out_of_order(tiny, report, name):
    """Prefill two prompts into cache rows [2, 0] of a 3-row state, then decode them in another order and
    one at a time: each matches upstream's forward of its own sequence."""
    m = tiny(name)
    vocab = m.config.vocab_size
    a, b = tokens(vocab, 12, seed=6), tokens(vocab, 12, seed=7)
    state = m.ours.new_state(max_batch=3, max_seq=32)
    ids = torch.stack([a[:7], torch.cat([b[:5], torch.zeros(2, dtype=torch.long)])])
    first = m.ours.prefill(ids, torch.tensor([7, 5]), torch.tensor([2, 0]), state)
    got_a, got_b = [first[0]], [first[1]]
    # both rows in swapped order
    out = m.ours.decode(torch.stack([b[5:6], a[7:8]]), torch.tensor([5, 7]), torch.tensor([0, 2]), state)
    got_b.append(out[0]), got_a.append(out[1])
    # then one row at a time
    got_a.append(m.ours.decode(a[None, 8:9], torch.tensor([8]), torch.tensor([2]), state)[0])
    got_b.append(m.ours.decode(b[None, 6:7], torch.tensor([6]), torch.tensor([0]), state)[0])
    worst = max(max_diff(torch.stack(got_a), upstream_logits(m, a[:9])[6:]),
                max_diff(torch.stack(got_b), upstream_logits(m, b[:7])[4:]))
    assert report(f"{name} seq_ids [2, 0] out of order", worst) <= TOL
