"""Streaming generated tokens: generate() accepts a callback ``fn(tokens [B])`` called after every step, or
an object with transformers' streamer protocol (``put(prompt ids [B, S])`` once, ``put(tokens [B])`` per
step, ``end()``), such as ``transformers.TextStreamer`` / ``TextIteratorStreamer``. ``TextStreamer`` here
does the same without transformers: it decodes the running text and prints what has become final."""

from __future__ import annotations

import sys
from typing import Callable

import torch


class CallbackStreamer:
    """A plain callback in the streamer protocol: the prompt is not passed, nothing happens at the end."""

    def __init__(self, fn: Callable[[torch.Tensor], None]):
        self.fn = fn

    def put(self, tokens: torch.Tensor) -> None:
        if tokens.dim() == 1:
            self.fn(tokens)

    def end(self) -> None:
        pass


def as_streamer(streamer):
    """None, a callback, or a put/end object -> None or a put/end object (callables are callbacks)."""
    if streamer is None or (hasattr(streamer, "put") and hasattr(streamer, "end") and not callable(streamer)):
        return streamer
    if callable(streamer):
        return CallbackStreamer(streamer)
    from .errors import InputError

    raise InputError(f"streamer={type(streamer).__name__} must be a callable fn(tokens) or an object with "
                     f"put(tokens) and end() (e.g. transformers.TextStreamer).")


class TextStreamer:
    """Prints the text of one sequence as it is generated, like ``transformers.TextStreamer``: the running
    text is decoded as a whole (a token's text can depend on its neighbours: SentencePiece word spaces,
    multi-byte characters split over tokens), and only the part that can no longer change is printed -
    up to the last space or newline, never a trailing incomplete character (U+FFFD). What it prints in
    all is exactly ``decode(all new tokens)``."""

    def __init__(self, tokenizer, skip_prompt: bool = True, file=None, **decode_kwargs):
        self.tokenizer, self.skip_prompt, self.decode_kwargs = tokenizer, skip_prompt, decode_kwargs
        self.file = file or sys.stdout
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_pending = True

    def put(self, tokens: torch.Tensor) -> None:
        if tokens.dim() > 1 and tokens.shape[0] > 1:
            raise ValueError("TextStreamer streams one sequence; pass a batch of one prompt.")
        if self.skip_prompt and self.prompt_pending:
            self.prompt_pending = False
            return
        self.tokens.extend(tokens.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, **self.decode_kwargs)
        if not text.endswith("\ufffd"):
            self._emit(text[:max(text.rfind(" "), text.rfind("\n")) + 1])

    def end(self) -> None:
        self._emit(self.tokenizer.decode(self.tokens, **self.decode_kwargs) if self.tokens else "")
        print(file=self.file, flush=True)
        self.tokens, self.printed, self.prompt_pending = [], 0, True

    def _emit(self, text: str) -> None:
        if len(text) > self.printed:
            print(text[self.printed:], end="", file=self.file, flush=True)
            self.printed = len(text)
