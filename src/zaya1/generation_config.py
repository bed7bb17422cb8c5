"""Generation settings the way transformers resolves them: ``generation_config.json`` (or a
``GenerationConfig`` object / dict passed as ``generation_config=``) gives defaults, explicit keyword
arguments win, and ``None`` means "not given". ``resolve`` turns them into one ``GenerationOptions``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError
from .sampling import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 32  # transformers' fallback is max_length=20 (prompt included)
# transformers' fallbacks for what neither the call nor a generation config sets
FALLBACKS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
             "min_new_tokens": 0, "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
             "output_scores": False, "output_logits": False, "return_dict_in_generate": False}
# the settings generate() honours; the rest of a generation config (e.g. transformers_version, use_cache,
# bos_token_id, cache options) changes nothing for greedy/sampled decoding with a static cache
HONOURED = {"max_new_tokens", "max_length", "eos_token_id", "pad_token_id", *FALLBACKS}
ACCEPTED = {"use_cache", "bos_token_id", "transformers_version", "_from_model_config"}


@dataclass
class GenerationDefaults:
    """The settings of a generation config that are set (not None)."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "GenerationDefaults":
        """``<path>/generation_config.json`` when present (chat checkpoints list their end-of-turn EOS there)."""
        file = Path(path) / "generation_config.json"
        if not file.is_file():
            return cls()
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file} is not valid JSON ({exc}). Restore it from the original checkpoint "
                                  f"or delete it.") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{file} must hold a JSON object, got {type(raw).__name__}.")
        return cls.coerce(raw)

    @classmethod
    def coerce(cls, config) -> "GenerationDefaults":
        """From a transformers ``GenerationConfig``, a dict, or a GenerationDefaults."""
        if isinstance(config, GenerationDefaults):
            return config
        if hasattr(config, "to_dict"):  # transformers.GenerationConfig
            config = config.to_dict()
        if not isinstance(config, dict):
            raise InputError(f"generation_config must be a transformers GenerationConfig or a dict, got "
                             f"{type(config).__name__}.")
        return cls({k: v for k, v in config.items() if v is not None and k in HONOURED})


@dataclass
class GenerationOptions:
    max_new_tokens: int
    min_new_tokens: int
    sampling: SamplingParams
    eos_token_ids: list[int]
    pad_token_id: int
    output_scores: bool
    output_logits: bool
    return_dict: bool


def _eos_list(value) -> list[int]:
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InputError(f"eos_token_id={value!r} must be a token id or a list of token ids ([] never stops).")
    return list(values)


def eos_ids(settings: dict[str, Any], config_eos) -> list[int]:
    """The EOS list of generation settings (``GenerationDefaults.values``, or those merged with explicit
    arguments), else config.json's. ``[]`` is kept: it never stops."""
    return _eos_list(settings["eos_token_id"]) if "eos_token_id" in settings else list(config_eos)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} must be " + ("a positive integer." if minimum == 1
                                                          else f"an integer >= {minimum}."))
    return value


def resolve(model_defaults: GenerationDefaults | None, config_eos: list[int], config_pad: int | None,
            prompt_width: int, kwargs: dict[str, Any]) -> GenerationOptions:
    """Explicit ``kwargs`` (None = not given) over ``generation_config`` (a kwarg, else the model's
    generation_config.json) over transformers' fallbacks; EOS / pad fall back to config.json's."""
    unknown = sorted(set(kwargs) - HONOURED - ACCEPTED - {"generation_config"})
    if unknown:
        raise InputError(f"generate() got unsupported argument(s) {unknown}; supported: "
                         f"{sorted(HONOURED | {'generation_config', 'streamer', 'seed', 'max_seq_len'})}.")
    given = {k: v for k, v in kwargs.items() if v is not None and k != "generation_config"}
    base = kwargs.get("generation_config")
    base = GenerationDefaults.coerce(base) if base is not None else (model_defaults or GenerationDefaults())
    merged = {**FALLBACKS, **base.values, **given}
    if merged["num_beams"] != 1:
        raise InputError(f"num_beams={merged['num_beams']!r}: beam search is not supported; use greedy or sampled "
                         f"decoding (num_beams=1).")
    if merged["num_return_sequences"] != 1:
        raise InputError(f"num_return_sequences={merged['num_return_sequences']!r} is not supported; repeat the "
                         f"prompt in the batch instead.")
    if "max_new_tokens" in given or ("max_length" not in given and "max_new_tokens" in base.values):
        max_new = merged["max_new_tokens"]
        _positive_int("max_new_tokens", max_new)
    elif "max_length" in merged:
        max_new = _positive_int("max_length", merged["max_length"]) - prompt_width
        if max_new <= 0:
            raise InputError(f"max_length={merged['max_length']} leaves no room after the {prompt_width}-token prompt "
                             f"(max_length counts the prompt); raise it or pass max_new_tokens.")
    else:
        max_new = DEFAULT_MAX_NEW_TOKENS
    min_new = max(_positive_int("min_new_tokens", merged["min_new_tokens"], 0),
                  _positive_int("min_length", merged["min_length"], 0) - prompt_width)
    temperature = merged["temperature"]
    do_sample = bool(merged["do_sample"]) and temperature != 0  # temperature 0 = greedy (llama.cpp, vLLM)
    sampling = SamplingParams(do_sample, 1.0 if temperature == 0 else temperature, merged["top_k"],
                              merged["top_p"], merged["repetition_penalty"])
    sampling.validate()
    eos = eos_ids(merged, config_eos)
    pad = merged.get("pad_token_id", config_pad)
    if pad is None:
        pad = eos[0] if eos else 0  # transformers pads with the (first) EOS when there is no pad token
    return GenerationOptions(max_new, min_new, sampling, eos, _positive_int("pad_token_id", pad, 0),
                             bool(merged["output_scores"]), bool(merged["output_logits"]),
                             bool(merged["return_dict_in_generate"]))
