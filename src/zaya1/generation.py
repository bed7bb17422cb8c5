"""Generation over the static-state step functions: batching of ragged prompts, greedy and sampled decoding,
EOS handling, streaming, and the tokenizer that comes with a checkpoint.

Any model with ``config``, ``new_state(max_batch, max_seq)``, ``prefill(ids, lengths, seq_ids, state)`` and
``decode(ids, positions, seq_ids, state, kv_len)`` generates through ``generate``: the plain PyTorch model,
the simulated tensor-parallel one, and the Neuron one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import CheckpointError, CheckpointNotFoundError, InputError


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def validate(self) -> None:
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature) or self.temperature <= 0):
            raise InputError(f"temperature={self.temperature!r} must be a finite number > 0 (for greedy decoding "
                             f"use do_sample=False and leave temperature at 1.0).")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables top-k).")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p!r} must be in (0, 1] (1 disables nucleus sampling).")


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]: argmax, or temperature -> top-k -> top-p -> multinomial."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float32) / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= params.top_p  # keeps the first token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids",
                    attention_mask: torch.Tensor | None = None) -> None:
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


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             seed: int | None = None, streamer: Callable[[torch.Tensor], None] | None = None,
             max_seq_len: int | None = None) -> torch.Tensor:
    """Generate for a batch of prompts of different lengths (left- or right-padded with ``attention_mask``).

    Returns ``input_ids`` followed by the new tokens [B, prompt + n]; sequences that hit an EOS token are
    padded with ``pad_token_id`` after it, as transformers does. ``streamer(tokens [B])`` is called after
    every step. ``eos_token_id`` defaults to the config's (pass ``[]`` to never stop early)."""
    cfg = model.config
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    check_token_ids(input_ids, cfg.vocab_size, attention_mask=attention_mask)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    params = SamplingParams(do_sample, temperature, top_k, top_p)
    params.validate()
    eos = cfg.eos_token_id if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id or 0)

    prompts = split_prompts(input_ids, attention_mask)
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
    state = model.new_state(batch, bucket(longest + max_new_tokens, 64, limit))
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    ids, _ = right_pad(prompts, pad, bucket(longest, 16, state.max_seq), device)
    seq_ids = torch.arange(batch, device=device)
    logits = model.prefill(ids, lengths, seq_ids, state)

    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens = []
    positions = lengths.clone()
    for step in range(max_new_tokens):
        token = logits if not logits.is_floating_point() else sample(logits, params, generator)  # tokens: sampled on device
        token = torch.where(finished, torch.full_like(token, pad), token)
        new_tokens.append(token)
        if streamer is not None:
            streamer(token)
        finished = finished | torch.isin(token, eos_t)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        logits = model.decode(token[:, None], positions, seq_ids, state,
                              kv_len=bucket(int(positions.max()) + 1, 64, state.max_seq))
        positions = positions + 1
    return torch.cat([input_ids.to(device), torch.stack(new_tokens, dim=1)], dim=1)


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


# ---------------------------------------------------------------------------------------------- tokenizer
def _auto_tokenizer_picks_a_class(path: Path) -> bool:
    """Whether transformers' AutoTokenizer can choose the tokenizer class: tokenizer_config.json names one, or
    this transformers maps ``model_type: zaya`` to one (>= 5.23). Older ones (NxDI pins 4.57) refuse such a
    checkpoint."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    config = path / "tokenizer_config.json"
    try:
        named = config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class"))
    except (ValueError, AttributeError):
        return True  # unreadable: AutoTokenizer's own error says so
    return named or "zaya" in TOKENIZER_MAPPING_NAMES


class Tokenizer:
    """The checkpoint's tokenizer: transformers' AutoTokenizer when installed (chat templates; tokenizer.json as
    a plain fast tokenizer where AutoTokenizer cannot choose a class), otherwise the ``tokenizers`` library on
    tokenizer.json. Never runs code from the checkpoint."""

    def __init__(self, backend, eos_token_ids: list[int] | None = None):
        self.backend = backend
        self.eos_token_ids = eos_token_ids or []

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise CheckpointNotFoundError(
                f"no tokenizer in {path} (tokenizer.json / tokenizer_config.json missing). Copy the checkpoint's "
                f"tokenizer files there, or pass token ids directly (zaya1 generate --prompt-ids ...).")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            AutoTokenizer = None
        try:
            if AutoTokenizer is not None:
                if (path / "tokenizer.json").is_file() and not _auto_tokenizer_picks_a_class(path):
                    from transformers import PreTrainedTokenizerFast

                    return cls(PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True))
                return cls(AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True))
            from tokenizers import Tokenizer as RawTokenizer

            if not (path / "tokenizer.json").is_file():
                raise CheckpointNotFoundError(f"{path / 'tokenizer.json'} is missing and transformers is not "
                                              f"installed to read tokenizer_config.json: copy tokenizer.json there "
                                              f"or pip install transformers.")
            return cls(RawTokenizer.from_file(str(path / "tokenizer.json")))
        except CheckpointNotFoundError:
            raise
        except Exception as exc:  # transformers / tokenizers raise many types (ValueError, OSError, Exception)
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"the tokenizer files in {path} (tokenizer.json / tokenizer_config.json) cannot be "
                                  f"loaded ({type(exc).__name__}: {detail}). Copy them again from the original "
                                  f"checkpoint.") from exc

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.backend, "chat_template", None))

    def encode(self, text: str, chat: bool = False) -> list[int]:
        if chat and self.has_chat_template:
            return list(self.backend.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=True))
        if hasattr(self.backend, "encode_batch"):  # tokenizers.Tokenizer
            return self.backend.encode(text).ids
        return self.backend.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)
