"""On-device sampling in the plugin's form: per-row parameters as one tensor, static shapes, no host work.

``sampling_params`` [R, 3] float32 holds ``[top_k, top_p, temperature]`` per row (the runner's defaults -1,
1.0, 0.0): temperature below 1e-5 is greedy; top_k <= 0 means no top-k, but like the plugin's ``Sampler``
(vllm_neuron/nn/sampler.py, read at longdct/vllm-neuron@d6917d0) candidates are the ``MAX_TOP_K`` best logits
of the row, so top_k is at most 256. The order is transformers' (zaya1.sampling.warp): temperature, top-k,
top-p (the token that crosses top_p is kept), then a draw by inverse CDF from one uniform number per row.
"""

from __future__ import annotations

import torch

MAX_TOP_K = 256
GREEDY_BELOW = 1e-5


def candidate_scores(logits: torch.Tensor, params: torch.Tensor):
    """logits [R, V] fp32, params [R, 3] -> (scores [R, K] of the K = min(256, V) best tokens after
    temperature / top-k / top-p, -inf where cut, in descending order; their token ids [R, K])."""
    top_k, top_p, temperature = params[:, 0:1], params[:, 1:2], params[:, 2:3]
    best, ids = torch.topk(logits, min(MAX_TOP_K, logits.shape[-1]), dim=-1)  # sorted, descending
    scores = best / temperature.clamp_min(GREEDY_BELOW)
    rank = torch.arange(best.shape[-1], device=logits.device)[None, :]
    scores = scores.masked_fill((top_k > 0) & (rank >= top_k), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, float("-inf"))  # keeps the first token
    return scores, ids


def sample(logits: torch.Tensor, params: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [R] int32 from fp32 logits [R, V] with per-row params [R, 3]; ``uniform`` [R] in [0, 1)
    (torch.rand when None: pass it to make a draw reproducible)."""
    scores, ids = candidate_scores(logits, params)
    probs = torch.softmax(scores, dim=-1)
    if uniform is None:
        uniform = torch.rand(logits.shape[0], device=logits.device)
    below = (probs.cumsum(dim=-1) <= uniform[:, None]).sum(-1, keepdim=True)  # inverse CDF
    kept = torch.isfinite(scores).sum(-1, keepdim=True)  # u above an fp32 total below 1: the last kept token
    drawn = ids.gather(1, torch.minimum(below, kept - 1))[:, 0]
    greedy = params[:, 2] < GREEDY_BELOW
    return torch.where(greedy, logits.argmax(dim=-1), drawn).to(torch.int32)
