"""The tokenizer that comes with a checkpoint: transformers' AutoTokenizer when installed (chat templates),
otherwise the ``tokenizers`` library on tokenizer.json. Never runs code from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import CheckpointError, CheckpointNotFoundError, InputError


class Tokenizer:
    """The checkpoint's tokenizer: transformers' AutoTokenizer when installed (chat templates), otherwise the
    ``tokenizers`` library on tokenizer.json. Never runs code from the checkpoint."""

    def __init__(self, backend, eos_token_ids: list[int] | None = None, unrendered_template: Path | None = None):
        """``unrendered_template``: the checkpoint directory whose chat template ``backend`` cannot render (the
        ``tokenizers`` library has no template engine; transformers does)."""
        self.backend = backend
        self.eos_token_ids = eos_token_ids or []
        self.unrendered_template = unrendered_template

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
                return cls(AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True))
            from tokenizers import Tokenizer as RawTokenizer

            if not (path / "tokenizer.json").is_file():
                raise CheckpointNotFoundError(f"{path / 'tokenizer.json'} is missing and transformers is not "
                                              f"installed to read tokenizer_config.json: copy tokenizer.json there "
                                              f"or pip install transformers.")
            return cls(RawTokenizer.from_file(str(path / "tokenizer.json")),
                       unrendered_template=path if ships_chat_template(path) else None)
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

    def encode(self, text: str, chat: bool = False, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``chat=True`` wraps it as one user turn in the chat template (with the
        assistant's generation prompt), exactly as ``apply_chat_template`` does. ``add_special_tokens=False``
        leaves out what the tokenizer adds to plain text (a BOS, or an EOS some tokenizers append)."""
        if chat:
            if self.unrendered_template is not None:
                raise InputError(f"chat=True (--chat): rendering the chat template of {self.unrendered_template} "
                                 f"needs transformers, which is not installed: pip install "
                                 f"'transformers>=5.23,<5.40' (zaya1's hf extra), or encode the prompt as plain text.")
            if not self.has_chat_template:
                raise InputError("chat=True (--chat): this tokenizer has no chat template (chat_template in "
                                 "tokenizer_config.json or chat_template.jinja); encode the prompt as plain text.")
            encoded = self.backend.apply_chat_template([{"role": "user", "content": text}],
                                                       add_generation_prompt=True, tokenize=True, return_dict=True)
            return list(encoded["input_ids"])
        if hasattr(self.backend, "encode_batch"):  # tokenizers.Tokenizer
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def ships_chat_template(path: Path) -> bool:
    """Whether the checkpoint at ``path`` has a chat template: chat_template.jinja, or ``chat_template`` in
    tokenizer_config.json (where transformers looks)."""
    if (path / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or unreadable: transformers would not find a template there either
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))
