"""The logit_validation equivalent of shims/validation_equivalent.py (what NxDI's check_accuracy_logits_v2 runs in
the CPU stage) on constructed logits whose verdict follows from torch_neuronx's documented algorithm: tolerances
relative to the largest expected logit per top-k, a constant shift removed, -inf columns left out, and
teacher forcing past a divergence whose logit gap is checked. Needs torch only."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "shims"))
from validation_equivalent import DEFAULT_TOLERANCE_MAP, custom_allclose, decimals, logit_validation  # noqa: E402

PROMPT, STEPS, BATCH, VOCAB = 5, 6, 2, 2000


def scripted(expected: torch.Tensor, change=None):
    """A generate_fn that returns ``expected`` [N, B, V] from the position after its input (``change(scores,
    first_position)`` applied), recording the input lengths it was called with."""
    calls = []

    def generate_fn(input_ids):
        start = input_ids.shape[1] - PROMPT
        calls.append(input_ids.clone())
        scores = expected[start:].clone()
        return change(scores, start) if change else scores

    return generate_fn, calls


@pytest.fixture
def expected() -> torch.Tensor:
    logits = torch.randn(STEPS, BATCH, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    top = logits.argmax(-1, keepdim=True)
    return logits.scatter(-1, top, logits.gather(-1, top) + 4.0)  # a clear top-1 at every position


def prompt() -> torch.Tensor:
    return torch.arange(BATCH * PROMPT).view(BATCH, PROMPT)


def test_identical_and_shifted_logits_pass_in_one_call(expected):
    for change in (None, lambda s, start: s + 3.0):  # a constant shift is removed before comparing
        fn, calls = scripted(expected, change)
        passed, results, status = logit_validation(prompt(), fn, expected)
        assert passed and len(calls) == 1 and "No divergence" in status, status
        assert all(len(row) == STEPS and not any(r["divergence"] for r in row) for row in results)
        assert max(r["error_map"][None] for row in results for r in row) <= 1e-5


def test_top5_error_beyond_one_percent_of_the_largest_logit_fails(expected):
    """2 % of max|expected| added to the 3rd-ranked logit of one position: within the 5 % of all columns and the
    3 % of the top 1000, above the 1 % of the top 5."""
    def change(scores, start):
        step, row = 3 - start, 1
        if step >= 0:
            third = torch.topk(expected[3, row], 3).indices[2]
            scores[step, row, third] += 0.02 * expected[3, row].abs().max()
        return scores

    passed, results, status = logit_validation(prompt(), scripted(expected, change)[0], expected)
    assert not passed and "Test failed at batch 1 token 3. Top k = 5 error" in status, status
    worst = results[1][3]["error_map"]
    assert worst[5] == pytest.approx(0.02, abs=1e-4) and worst[None] < 0.05 and worst[1000] < 0.03


def test_neg_inf_columns_on_either_side_are_left_out(expected):
    """A prohibited column (-inf on the device, as EOS under min_new_tokens) is omitted, even where the expected
    value there is the largest (it would otherwise fail every tolerance)."""
    eos = 7
    boosted = expected.clone()
    boosted[..., eos] = boosted.amax(-1) - 0.5  # second best everywhere: argmax unchanged
    passed, _, status = logit_validation(prompt(), scripted(boosted, lambda s, t: s.index_fill(-1, torch.tensor(
        [eos]), float("-inf")))[0], boosted)
    assert passed, status
    fn, _ = scripted(boosted, lambda s, t: s.index_fill(-1, torch.tensor([eos]), -1e4))  # finite: compared
    assert not logit_validation(prompt(), fn, boosted)[0]


@pytest.mark.parametrize("gap, passes", [(0.0005, True), (0.01, False)])
def test_divergence_is_teacher_forced_and_its_gap_checked(expected, gap, passes):
    """At position 2 of row 0 the expected top two are 2e-4 apart and the device prefers the runner-up by
    ``gap`` (a tiny change of every logit): the divergence is validated against divergence_difference_tol
    (0.001), then generation resumes from the prompt + the EXPECTED tokens 0..2 (teacher forcing) and the
    remaining positions are validated from the second call."""
    first, second = torch.topk(expected[2, 0], 2).indices
    expected[2, 0, second] = expected[2, 0, first] - 2e-4

    def change(scores, start):
        if start <= 2:
            scores[2 - start, 0, second] = expected[2, 0, first] + gap
        return scores

    fn, calls = scripted(expected, change)
    passed, results, status = logit_validation(prompt(), fn, expected)
    assert [c.shape[1] for c in calls] == [PROMPT, PROMPT + 3]
    assert torch.equal(calls[1][:, PROMPT:], expected[:3].argmax(-1).T)
    assert results[0][2]["divergence"] and results[0][2]["divergence_difference"] == pytest.approx(gap, rel=1e-3)
    assert len(results[0]) == STEPS and "Divergence at index 3." in status
    assert passed == passes, status


def test_defaults_and_custom_allclose_as_documented():
    assert DEFAULT_TOLERANCE_MAP == {None: (1e-5, 0.05), 1000: (1e-5, 0.03), 50: (1e-5, 0.02), 5: (1e-5, 0.01)}
    assert [decimals(x) for x in (0.05, 0.01, 1e-5, 1.0)] == [2, 2, 5, 1]
    b = torch.tensor([10.0, -20.0, 5.0])
    close, error = custom_allclose(b + torch.tensor([0.0, 0.9, 0.0]), b, atol=0.0, rtol=0.05)
    assert close and error == pytest.approx(0.045)  # relative to max|b| = 20, not to |b[1]|
    assert not custom_allclose(b + torch.tensor([0.0, 0.0, 1.2]), b, atol=0.0, rtol=0.05)[0]


def test_top_k_beyond_the_vocabulary_fails_as_in_torch_neuronx(expected):
    small = expected[..., :384]
    with pytest.raises(RuntimeError):
        logit_validation(prompt(), scripted(small)[0], small)
