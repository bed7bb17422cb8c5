"""Choosing the next token from logits: greedy, or temperature -> top-k -> top-p -> multinomial, in
transformers' order and with its semantics; the repetition penalty and the minimum-length EOS mask that
run before them (transformers' logits processors)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InputError


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the sequence

    def validate(self) -> None:
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature) or self.temperature <= 0):
            raise InputError(f"temperature={self.temperature!r} must be a finite number > 0 (for greedy decoding "
                             f"use do_sample=False and leave temperature at 1.0, or pass temperature=0).")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables top-k).")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p!r} must be in (0, 1] (1 disables nucleus sampling).")
        if (isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, (int, float))
                or not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0):
            raise InputError(f"repetition_penalty={self.repetition_penalty!r} must be a finite number > 0 "
                             f"(1.0 disables it).")


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float,
             seen_mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V], seen [B, S] token ids so far, seen_mask [B, S] (False = padding, not counted): the logit
    of every seen token is divided by ``penalty`` when positive and multiplied by it when negative."""
    if penalty == 1.0:
        return logits
    vocab = logits.shape[-1]
    if seen_mask is not None:
        seen = seen.masked_fill(~seen_mask.to(torch.bool), vocab)  # a column past the vocabulary
    hit = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    hit = hit.scatter(1, seen, True)[:, :vocab]
    return torch.where(hit, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [B, V] -> the fp32 scores the token is drawn from: unchanged when greedy, else divided by the
    temperature, then everything outside the top-k and the top-p nucleus set to -inf."""
    logits = logits.to(torch.float32)
    if not params.do_sample:
        return logits
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= params.top_p  # keeps the first token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def pick(scores: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warped scores [B, V] -> token ids [B]: argmax, or a draw from softmax(scores) (torch's global RNG
    without a generator, as transformers does)."""
    if not params.do_sample:
        return scores.argmax(dim=-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]: argmax, or temperature -> top-k -> top-p -> multinomial."""
    return pick(warp(logits, params), params, generator)
