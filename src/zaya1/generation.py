"""Generation over the static-state step functions: batching of ragged prompts, greedy and sampled decoding,
EOS handling and streaming, with transformers' ``generate`` arguments and generation-config defaults.

Any model with ``config``, ``new_state(max_batch, max_seq)``, ``prefill(ids, lengths, seq_ids, state)`` and
``decode(ids, positions, seq_ids, state, kv_len)`` generates through ``generate``: the plain PyTorch model,
the simulated tensor-parallel one, and the Neuron one. A backend with compiled shapes may add
``check_request(batch, prompt_lengths, max_new_tokens)``, called before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError
from .generation_config import resolve
from .sampling import SamplingParams, penalize, pick, sample, warp  # noqa: F401  (SamplingParams, sample: API)
from .streaming import as_streamer
from .tokenizer import Tokenizer  # noqa: F401  (the checkpoint's tokenizer, zaya1.generation.Tokenizer)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids",
                    attention_mask: torch.Tensor | None = None) -> None:
    if isinstance(input_ids, torch.Tensor) and input_ids.numel() == 0:
        raise InputError(f"{name} is empty (shape {list(input_ids.shape)}): an empty prompt has nothing to condition "
                         f"on. Give at least one token: shape [batch, seq] with batch >= 1 and seq >= 1.")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{name} must be an integer tensor of token ids (e.g. torch.tensor([[...]])), got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}.")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise InputError(f"{name} must have shape [batch, seq] with batch >= 1 and seq >= 1 (an empty prompt "
                         f"has nothing to condition on), got {list(input_ids.shape)}.")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != input_ids.shape):
        raise InputError(f"attention_mask shape {list(getattr(attention_mask, 'shape', []))} differs from {name} "
                         f"shape {list(input_ids.shape)}; pass one 0/1 entry per token.")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)][:5].tolist()
        raise InputError(f"{name} holds token id(s) {bad} outside the vocabulary [0, {vocab_size}). "
                         f"Was the prompt tokenized with this checkpoint's tokenizer?")


def split_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The real tokens of each row (left or right padding removed)."""
    if attention_mask is None:
        return list(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask shape {list(attention_mask.shape)} differs from input_ids shape "
                         f"{list(input_ids.shape)}.")
    rows = [ids[mask.to(torch.bool)] for ids, mask in zip(input_ids, attention_mask)]
    empty = [i for i, row in enumerate(rows) if row.numel() == 0]
    if empty:
        raise InputError(f"prompt(s) {empty} are empty (attention_mask is all zeros); every prompt needs at "
                         f"least one token.")
    return rows


def right_pad(prompts: list[torch.Tensor], pad: int, width: int | None = None, device=None):
    """Prompts -> right-padded ids [B, width] (default: the longest prompt) and lengths [B]."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.full((len(prompts), width or int(lengths.max())), pad, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt.to(ids.device)
    return ids, lengths


def bucket(length: int, multiple: int, limit: int) -> int:
    """Round up to a static bucket size so steps reuse compiled shapes."""
    return min(-(-length // multiple) * multiple, limit)


@dataclass
class GenerateOutput:
    """``return_dict_in_generate=True``: as transformers' GenerateDecoderOnlyOutput. ``scores``: per step the
    processed scores [B, V] the token was chosen from (``output_scores``); ``logits``: the raw logits."""

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, seed: int | None = None,
             streamer=None, max_seq_len: int | None = None, **kwargs: Any):
    """Generate for a batch of prompts of different lengths (left- or right-padded with ``attention_mask``).

    Returns ``input_ids`` followed by the new tokens [B, prompt + n] (or a ``GenerateOutput`` with
    ``return_dict_in_generate=True``); sequences that hit an EOS token are padded with ``pad_token_id``
    after it, as transformers does. Takes transformers' arguments: ``max_new_tokens`` / ``max_length``,
    ``min_new_tokens`` / ``min_length``, ``do_sample``, ``temperature`` (0 = greedy), ``top_k``, ``top_p``,
    ``repetition_penalty``, ``eos_token_id`` (``[]`` never stops), ``pad_token_id``, ``output_scores``,
    ``output_logits``, ``return_dict_in_generate`` and ``generation_config`` (a GenerationConfig or dict);
    ``None`` means not given. Defaults come from ``generation_config`` or the model's
    generation_config.json, then transformers' (max_new_tokens 32 here). ``streamer``: a callback
    ``fn(tokens [B])`` after every step, or a transformers-style streamer (``put`` / ``end``). ``seed``
    draws samples from a private generator (else torch's global RNG, as transformers)."""
    cfg = model.config
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    check_token_ids(input_ids, cfg.vocab_size, attention_mask=attention_mask)
    opts = resolve(getattr(model, "generation_config", None), cfg.eos_token_id, cfg.pad_token_id,
                   input_ids.shape[1], kwargs)
    max_new_tokens, params, pad = opts.max_new_tokens, opts.sampling, opts.pad_token_id
    streamer = as_streamer(streamer)

    prompts = split_prompts(input_ids, attention_mask)
    if hasattr(model, "check_request"):  # the request against the backend's compiled shapes
        model.check_request(len(prompts), [len(p) for p in prompts], max_new_tokens)
    batch, device = len(prompts), model.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    longest = int(lengths.max())
    if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int)
                                    or max_seq_len <= 0):
        raise InputError(f"max_seq_len={max_seq_len!r} must be a positive integer (or None for "
                         f"max_position_embeddings={cfg.max_position_embeddings}).")
    limit = max_seq_len or cfg.max_position_embeddings
    source = f"max_seq_len={limit}" if max_seq_len is not None else f"max_position_embeddings={limit} in config.json"
    if longest >= limit:
        raise InputError(f"prompt {int(lengths.argmax())} has {longest} tokens, but the maximum sequence length is "
                         f"{limit} ({source}), which leaves no room for new tokens. "
                         + (f"Truncate the prompt to at most {limit - max_new_tokens} tokens." if limit > max_new_tokens
                            else f"Shorten the prompt and lower max_new_tokens below {limit}."))
    if longest + max_new_tokens > limit:
        raise InputError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                         f"{longest + max_new_tokens} exceeds the maximum sequence length {limit} ({source}). "
                         f"Lower max_new_tokens to at most {limit - longest} or shorten the prompt.")
    if getattr(model, "samples_on_device", False):  # its steps return tokens sampled with these params
        if opts.min_new_tokens or opts.output_scores or opts.output_logits or params.repetition_penalty != 1.0:
            raise InputError("min_new_tokens, repetition_penalty, output_scores and output_logits need logits on "
                             "the host; this model samples on its device (compiled with on-device sampling).")
        model.configure_sampling(params)
    state = model.new_state(batch, bucket(longest + max_new_tokens, 64, limit))
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    ids, _ = right_pad(prompts, pad, bucket(longest, 16, state.max_seq), device)
    seq_ids = torch.arange(batch, device=device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    logits = model.prefill(ids, lengths, seq_ids, state)

    eos_t = torch.tensor(opts.eos_token_ids, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    sequences = input_ids.to(device, torch.long)
    counted = (torch.ones_like(sequences, dtype=torch.bool) if attention_mask is None  # [B, S] real tokens
               else attention_mask.to(device).bool())
    scores, raw_logits = [], []
    positions = lengths.clone()
    for step in range(max_new_tokens):
        if logits.is_floating_point():
            processed = penalize(logits, sequences, params.repetition_penalty, counted)
            if step < opts.min_new_tokens and eos_t.numel():
                processed = processed.index_fill(-1, eos_t, float("-inf"))
            step_scores = warp(processed, params)
            token = pick(step_scores, params, generator)
        else:  # the backend sampled on its device
            token = logits
        token = torch.where(finished, torch.full_like(token, pad), token)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        counted = torch.cat([counted, torch.ones_like(counted[:, :1])], dim=1)
        if opts.output_scores:
            scores.append(step_scores)
        if opts.output_logits:
            raw_logits.append(logits.to(torch.float32))
        if streamer is not None:
            streamer.put(token.cpu())
        finished = finished | torch.isin(token, eos_t)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        logits = model.decode(token[:, None], positions, seq_ids, state,
                              kv_len=bucket(int(positions.max()) + 1, 64, state.max_seq))
        positions = positions + 1
    if streamer is not None:
        streamer.end()
    if not opts.return_dict:
        return sequences
    return GenerateOutput(sequences, tuple(scores) if opts.output_scores else None,
                          tuple(raw_logits) if opts.output_logits else None)


@torch.inference_mode()
def teacher_forced_logits(model, prompts: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """Logits after the prompts [B, S] (no padding) and after each continuation token [B, n], through the
    model's prefill and decode steps: [B, n + 1, V]. Compares backends position by position."""
    batch, seq = prompts.shape
    total = seq + continuation.shape[1] + 1
    state = model.new_state(batch, bucket(total, 64, max(total, model.config.max_position_embeddings)))
    seq_ids = torch.arange(batch)
    logits = [model.prefill(prompts, torch.full((batch,), seq), seq_ids, state)]
    for k in range(continuation.shape[1]):
        positions = torch.full((batch,), seq + k)
        logits.append(model.decode(continuation[:, k:k + 1], positions, seq_ids, state,
                                   kv_len=bucket(seq + k + 1, 64, state.max_seq)))
    return torch.stack(logits, dim=1)
