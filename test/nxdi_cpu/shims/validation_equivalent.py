"""An equivalent of torch_neuronx.testing.validation's ``logit_validation`` and ``custom_allclose`` for the NxDI
CPU stage (test-only), so that NxDI's ``check_accuracy_logits_v2`` runs its comparison here instead of
reaching a raising stub.

Reimplemented from the algorithm and defaults of torch-neuronx 2.x's torch_neuronx/testing/validation.py (the
Neuron SDK's wheel; read through the public code index, not copied): the variant NxDI 4bcdc54's
utils/accuracy.py calls, ``logit_validation(input_ids, generate_fn, expected_logits, tol_map,
divergence_difference_tol) -> (passed, results, status_msg)``. Its algorithm:

* ``expected_logits`` [N, B, V]; the expected tokens are their argmax. ``generate_fn(input_ids)`` returns the
  model's scores [n, B, V] (or ``(scores, tokens [B, n])`` with on-device sampling) for the tokens after
  ``input_ids``. The first position where any row's actual token differs from the expected one is the
  divergence; positions up to and including it are validated, then the expected tokens up to it are appended
  to ``input_ids`` (teacher forcing) and ``generate_fn`` runs again from there, until all N are validated.
  A top-k larger than the vocabulary fails in ``torch.topk``, as in the original: pass a ``tol_map`` without
  it for vocabularies under 1000.
* Per position and row: columns that are -inf on either side are left out (a prohibited token, e.g. EOS under
  ``min_new_tokens``); a constant shift is removed (least squares ``actual ~ slope * expected + shift``, then
  ``actual -= shift``); for each ``top_k -> (atol, rtol)`` of ``tol_map`` (None: every column), over the
  expected top-k columns, ``error = (|actual - expected| - atol) / max|expected|`` (``custom_allclose``: rtol
  relative to the largest expected magnitude, as neuronx-cc's own golden check), passing when every error,
  rounded to rtol's decimals, is <= rtol; where the argmaxes differ, ``|actual[actual token] - actual[expected
  token]|`` must be below ``divergence_difference_tol``.
* Defaults: ``tol_map = {None: (1e-5, 0.05), 1000: (1e-5, 0.03), 50: (1e-5, 0.02), 5: (1e-5, 0.01)}``,
  ``divergence_difference_tol = 0.001`` (NxDI passes its own 0.001), shift removed, left padding.

Left out: the per-token report details (top-2 values, relative differences, mean errors) and right-padded
inputs (NxDI's check passes unpadded prompts); the arithmetic is float64; the results keep each
position's ``passed``, ``divergence``, ``divergence_difference``, ``error_map`` and ``shift``.
"""

from __future__ import annotations

import torch

DEFAULT_TOLERANCE_MAP = {None: (1e-5, 0.05), 1000: (1e-5, 0.03), 50: (1e-5, 0.02), 5: (1e-5, 0.01)}
DEFAULT_DIVERGENCE_DIFFERENCE_TOLERANCE = 0.001


def decimals(x: float) -> int:
    """Digits after the decimal point of ``x`` as Python writes it (0.05 -> 2, 1e-05 -> 5, 1.0 -> 1)."""
    mantissa, _, exponent = repr(float(x)).partition("e")
    places = len(mantissa.partition(".")[2])
    return max(places - int(exponent or 0), 0)


def custom_allclose(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> tuple[bool, float]:
    """torch.allclose with rtol relative to max|b| instead of |b|: -> (all close, the largest error)."""
    error = ((a - b).abs() - atol) / b.abs().max()
    return bool((torch.round(error, decimals=decimals(rtol)) <= rtol).all()), error.max().item()


def first_divergence(expected: torch.Tensor, actual: torch.Tensor) -> int:
    """Tokens [B, n] each: the number of positions up to and including the first that differs in any row."""
    n = min(expected.shape[1], actual.shape[1])
    differs = (expected[:, :n] != actual[:, :n]).any(dim=0).nonzero()
    return int(differs[0]) + 1 if len(differs) else n


def validate_position(expected: torch.Tensor, actual: torch.Tensor, tol_map: dict, divergence_tol: float,
                      actual_token: int | None = None) -> dict:
    """One position of one row: expected / actual scores [V] -> its results (``passed`` among them)."""
    keep = ~(torch.isneginf(expected) | torch.isneginf(actual))
    if actual_token is not None:
        assert keep[actual_token], "the sampled token has a -inf score"
        actual_token = int(keep[:actual_token].sum())  # its index among the kept columns
    expected, actual = expected[keep].double(), actual[keep].double()
    design = torch.stack([expected, torch.ones_like(expected)], dim=1)
    shift = torch.linalg.lstsq(design, actual[:, None]).solution[1, 0].item()
    actual = actual - shift
    passed, error_map, messages = True, {}, []
    for top_k, (atol, rtol) in tol_map.items():
        columns = torch.topk(expected, top_k).indices if top_k is not None else slice(None)
        close, error_map[top_k] = custom_allclose(actual[columns], expected[columns], atol, rtol)
        if not close:
            messages.append(f"Top k = {top_k} error {error_map[top_k]} > {rtol}.")
        passed &= close
    greedy = int(expected.argmax())
    actual_token = int(actual.argmax()) if actual_token is None else actual_token
    divergence_difference = 0.0
    if greedy != actual_token:
        divergence_difference = (actual[actual_token] - actual[greedy]).abs().item()
        if not divergence_difference < divergence_tol:
            messages.append(f"Divergence difference {divergence_difference} > {divergence_tol}.")
            passed = False
    return {"passed": passed, "divergence": greedy != actual_token, "divergence_difference": divergence_difference,
            "error_map": error_map, "shift": shift, "status": " ".join(messages)}


def logit_validation(input_ids: torch.Tensor, generate_fn, expected_logits: torch.Tensor, tol_map: dict | None = None,
                     divergence_difference_tol: float | None = None) -> tuple[bool, list[list[dict]], str]:
    """See the module docstring: -> (passed, results [B][N] per position, status message)."""
    tol_map = DEFAULT_TOLERANCE_MAP if tol_map is None else tol_map
    divergence_tol = (DEFAULT_DIVERGENCE_DIFFERENCE_TOLERANCE if divergence_difference_tol is None
                      else divergence_difference_tol)
    expected_tokens = expected_logits.argmax(dim=2).T  # [B, N]
    total = expected_tokens.shape[1]
    batch = input_ids.shape[0]
    passed, results, status = True, [[] for _ in range(batch)], []
    start = 0
    while start < total:
        out = generate_fn(input_ids)
        actual, sampled = out if isinstance(out, tuple) else (out, None)
        tokens = actual.argmax(dim=2).T if sampled is None else sampled
        end = start + first_divergence(expected_tokens[:, start:], tokens)
        status.append(f"Divergence at index {end}." if end < total else
                      f"No divergence. Validating the remaining {end - start} tokens in each batch.")
        for row in range(batch):
            for t in range(end - start):
                r = validate_position(expected_logits[start + t, row], actual[t, row], tol_map, divergence_tol,
                                      None if sampled is None else int(sampled[row, t]))
                results[row].append(r)
                if not r["passed"]:
                    passed = False
                    status.append(f"Test failed at batch {row} token {start + t}. {r['status']}")
        input_ids = torch.cat([input_ids, expected_tokens[:, start:end]], dim=1)
        start = end
    worst = {k: max(r["error_map"][k] for row in results for r in row) for k in tol_map}
    status.append(f"Max top-k errors {worst}; max divergence difference "
                  f"{max(r['divergence_difference'] for row in results for r in row)}.")
    status.append("Test passes logit validation." if passed else "Test fails logit validation.")
    return passed, results, "\n".join(status)
