"""One canonical ZAYA1 config, read from either checkpoint layout.

* ``original``: Zyphra's own layout (ZAYA1-base, the ``-legacy`` copies): ``zaya_layers`` alternates attention
  ('a') and MoE (int = number of experts) half-layers, per-half-layer lists for head counts and widths; or,
  as in the legacy-8B json, scalars (``num_hidden_layers`` half-layers, ``num_experts``, ``ffn_hidden_size``,
  ``zaya_mlp_expansion``, ``num_attention_heads`` query heads with ``head_dim``).
* ``hf``: the upstream transformers layout (ZAYA1-8B): ``num_hidden_layers`` hybrid layers, each an
  attention block followed by a MoE block, ``layer_types`` of ``hybrid`` / ``hybrid_sliding``.

Two reference implementations disagree in two places (architecture doc section 7). By default each
checkpoint follows the reference of its own layout; both are plain fields a user can override:
``router_norm_eps`` (original: 1e-6, hf: ``rms_norm_eps``) and ``skip_expert_output``
(original: ``"scaled_input"`` = router probability x normalised MoE input, hf: ``"zero"``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointNotFoundError, ConfigError

FULL, SLIDING = "full", "sliding"
SKIP_OUTPUTS = ("zero", "scaled_input")
LAYOUTS = ("original", "hf")
# quantized experts (quantization.py): their formats, the mxfp4 scale group; compressed-tensors names fp8
# weights "float-quantized" with activations quantized, "naive-quantized" without
FP8, MXFP4 = "fp8", "mxfp4"
EXPERT_FORMATS = (FP8, MXFP4)
QUANTIZE_TO = (FP8,)  # the formats zaya1 writes from dense experts (quantization.quantize_fp8)
MX_GROUP = 32
_FORMATS = {"float-quantized": FP8, "naive-quantized": FP8, "mxfp4-pack-quantized": MXFP4}
# the quantization_config a checkpoint of quantized experts carries, as compressed-tensors serializes it for
# weight-only schemes over the experts only (fp8: per-row scales; mxfp4: e8m0 scales per 32 columns)
_WRITTEN_FORMATS = {FP8: "naive-quantized", MXFP4: "mxfp4-pack-quantized"}
_WRITTEN_WEIGHTS = {
    FP8: {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False,
          "group_size": None},
    MXFP4: {"num_bits": 4, "type": "float", "strategy": "group", "symmetric": True, "dynamic": False,
            "group_size": MX_GROUP, "scale_dtype": "torch.uint8"},
}
EXPERTS_ONLY = "re:^(?!.*experts).*$"  # compressed-tensors' ignore: every module that is not an expert
# canonical fields that Hugging Face-style configs carry under the same names (vLLM's ModelConfig, NxDI's
# InferenceConfig and models/model_base.py read them there)
HF_NAMED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "head_dim", "max_position_embeddings", "rms_norm_eps")


@dataclass
class ZayaConfig:
    vocab_size: int = 262272
    hidden_size: int = 2048
    num_hidden_layers: int = 40  # hybrid layers (attention + MoE)
    num_attention_heads: int = 8  # CCA query heads
    num_key_value_heads: int = 2
    head_dim: int = 128
    num_experts: int = 16  # real experts; the router has one more class, the skip expert
    moe_intermediate_size: int = 2048
    router_hidden_size: int = 256
    cca_time0: int = 2
    cca_time1: int = 2
    rms_norm_eps: float = 1e-5
    router_norm_eps: float = 1e-5
    skip_expert_output: str = "zero"
    layer_types: list[str] = field(default_factory=list)  # "full" | "sliding", one per layer
    sliding_window: int | None = None  # keys with q_pos - k_pos < sliding_window (current token counted)
    rope_theta: float = 5_000_000.0
    rope_theta_sliding: float = 10_000.0
    partial_rotary_factor: float = 0.5  # full-attention layers
    partial_rotary_factor_sliding: float = 0.5  # sliding-window layers (hf: rope_parameters per layer type)
    hidden_act: str = "silu"  # the experts' gate activation (SwiGLU with silu in every released ZAYA1)
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: list[int] = field(default_factory=lambda: [106])
    torch_dtype: str = "bfloat16"  # dtype the checkpoint declares
    layout: str = "hf"
    expert_quantization: str | None = None  # "fp8" / "mxfp4": how the checkpoint stores the experts (quantization.py)

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = [FULL] * self.num_hidden_layers
        if self.eos_token_id is not None and not isinstance(self.eos_token_id, (list, tuple)):
            self.eos_token_id = [self.eos_token_id]
        self.eos_token_id = list(self.eos_token_id or [])
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_router_classes(self) -> int:
        return self.num_experts + 1

    @property
    def conv_state_len(self) -> int:
        """Packed q/k columns the causal conv needs from the past: (cca_time0 - 1) + (cca_time1 - 1)."""
        return self.cca_time0 - 1 + self.cca_time1 - 1

    @property
    def rotary_dims(self) -> dict[str, int]:
        """Rotated dims per head for each layer type, as upstream's ``int(head_dim * partial_rotary_factor)``."""
        return {FULL: int(self.head_dim * self.partial_rotary_factor),
                SLIDING: int(self.head_dim * self.partial_rotary_factor_sliding)}

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(cond: bool, what: str, fix: str) -> None:
            if not cond:
                raise ConfigError(f"unsupported ZAYA1 config: {what}. {fix}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "num_experts", "moe_intermediate_size",
                     "router_hidden_size", "cca_time0", "cca_time1", "max_position_embeddings"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name}={value!r} must be a positive integer", "Fix config.json.")
        for name in ("rms_norm_eps", "router_norm_eps", "rope_theta", "rope_theta_sliding"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and value > 0, f"{name}={value!r} must be positive",
                 "Fix config.json.")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads={self.num_attention_heads} is not a multiple of "
             f"num_key_value_heads={self.num_key_value_heads}",
             "Each KV head must serve the same number of query heads.")
        for kind, name in ((FULL, "partial_rotary_factor"), (SLIDING, "partial_rotary_factor_sliding")):
            factor, dim = getattr(self, name), self.rotary_dims[kind]
            need(self.head_dim % 2 == 0 and 0 < dim <= self.head_dim and dim % 2 == 0,
                 f"{name}={factor} ({kind} layers) with head_dim={self.head_dim} gives rotary_dim={dim}",
                 "It must give an even number of rotated dims <= head_dim.")
        need(isinstance(self.hidden_act, str) and bool(self.hidden_act),
             f"hidden_act={self.hidden_act!r} must be an activation name such as 'silu'", "Fix config.json.")
        need((self.num_key_value_heads * self.head_dim) % 2 == 0,
             "num_key_value_heads * head_dim must be even (half current-token, half previous-token values)",
             "Fix config.json.")
        need(len(self.layer_types) == self.num_hidden_layers,
             f"{len(self.layer_types)} layer_types for {self.num_hidden_layers} layers",
             "Give one layer type per layer.")
        bad = sorted({t for t in self.layer_types if t not in (FULL, SLIDING)})
        need(not bad, f"unknown layer type(s) {bad}", "Use 'hybrid' or 'hybrid_sliding' (hf layout).")
        if SLIDING in self.layer_types:
            need(isinstance(self.sliding_window, int) and self.sliding_window > 0,
                 f"sliding layers need a positive sliding_window, got {self.sliding_window!r}",
                 "Set sliding_window in config.json.")
        need(self.skip_expert_output in SKIP_OUTPUTS,
             f"skip_expert_output={self.skip_expert_output!r}", f"Use one of {SKIP_OUTPUTS}.")
        need(self.layout in LAYOUTS, f"layout={self.layout!r}", f"Use one of {LAYOUTS}.")
        need(self.expert_quantization in (None, *EXPERT_FORMATS), f"expert_quantization={self.expert_quantization!r}",
             f"Use None (dense experts) or one of {EXPERT_FORMATS}.")
        if self.expert_quantization == MXFP4:
            need(self.hidden_size % MX_GROUP == 0 and self.moe_intermediate_size % MX_GROUP == 0,
                 f"mxfp4 experts with hidden_size={self.hidden_size}, moe_intermediate_size="
                 f"{self.moe_intermediate_size}", f"Both must be multiples of the {MX_GROUP}-column scale group.")
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0),
                 f"{name}={value!r} must be a token id (an integer >= 0) or null", "Fix config.json.")
        need(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in self.eos_token_id),
             f"eos_token_id={self.eos_token_id!r} must be a token id or a list of token ids (integers >= 0)",
             "Fix config.json.")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "ZayaConfig":
        """Read ``<path>/config.json`` (or a config.json path) in either layout. ``overrides`` replace
        canonical fields, e.g. ``router_norm_eps=1e-5`` or ``skip_expert_output="zero"``."""
        path = Path(path)
        unknown = sorted(set(overrides) - _FIELD_NAMES)
        if unknown:
            raise ConfigError(f"unknown config override argument(s) {unknown}; valid names: {sorted(_FIELD_NAMES)}")
        file = path if path.is_file() else path / "config.json"
        if not path.exists():
            raise CheckpointNotFoundError(f"checkpoint path {path} does not exist. Pass a directory holding "
                                          f"config.json and *.safetensors.")
        if not file.is_file():
            raise CheckpointNotFoundError(f"{file} is missing: a ZAYA1 checkpoint directory needs config.json "
                                          f"next to its *.safetensors files.")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file} is not valid JSON ({exc}). Restore the original config.json.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a JSON object, got {type(raw).__name__}.")
        try:
            return cls.from_dict(raw, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict, **overrides: Any) -> "ZayaConfig":
        if raw.get("layout") in LAYOUTS and "model_type" not in raw:  # our own to_dict()
            fields = {k: v for k, v in raw.items() if k in _FIELD_NAMES}
        elif "zaya_layers" in raw:
            fields = _fields_from_original(raw)
        elif "layer_types" in raw or "moe_intermediate_size" in raw or "router_hidden_size" in raw:
            fields = _fields_from_hf(raw)
        elif any(name in raw for name in _ORIGINAL_SCALARS):
            fields = _fields_from_original(raw)
        else:
            raise ConfigError("the config is neither the original ZAYA1 layout (no 'zaya_layers' / "
                              "'ffn_hidden_size' / 'zaya_mlp_expansion') nor the Hugging Face layout (no "
                              "'layer_types' / 'moe_intermediate_size'). Is this a ZAYA1 checkpoint?")
        if raw.get("quantization_config") is not None and "expert_quantization" not in fields:
            fields["expert_quantization"] = expert_format(raw["quantization_config"])
        unknown = sorted(set(overrides) - _FIELD_NAMES)
        if unknown:
            raise ConfigError(f"unknown config override(s) {unknown}; valid fields: {sorted(_FIELD_NAMES)}")
        fields.update(overrides)
        try:
            return cls(**fields)
        except ConfigError as exc:
            if fields.get("layout") != "original":
                raise
            names = [f"{k} is {v}" for k, v in _ORIGINAL_NAMES.items() if f"{k}=" in str(exc)]
            if not names:
                raise
            raise ConfigError(f"{exc} (original layout: {'; '.join(names)})") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_hf_dict(self) -> dict:
        """config.json in the Hugging Face layout (what upstream transformers >= 5.23 loads; the inverse of
        ``_fields_from_hf``). A router eps other than ``rms_norm_eps`` or a skip expert other than "zero" (the
        original layout's references) has no upstream field: it is written under zaya1's own name, which zaya1
        reads back and transformers keeps as an unused attribute. Quantized experts carry the
        compressed-tensors ``quantization_config`` of their format (``expert_format`` reads it back)."""
        types = {FULL: "hybrid", SLIDING: "hybrid_sliding"}
        eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id)
        hf = {"architectures": ["ZayaForCausalLM"], "model_type": "zaya",
              **{name: getattr(self, name) for name in HF_NAMED_FIELDS},
              "hidden_act": self.hidden_act, "num_experts": self.num_experts, "num_experts_per_tok": 1,
              "moe_intermediate_size": self.moe_intermediate_size, "router_hidden_size": self.router_hidden_size,
              "cca_time0": self.cca_time0, "cca_time1": self.cca_time1,
              "layer_types": [types[t] for t in self.layer_types], "sliding_window": self.sliding_window,
              "rope_parameters": {
                  "hybrid": {"rope_type": "default", "rope_theta": self.rope_theta,
                             "partial_rotary_factor": self.partial_rotary_factor},
                  "hybrid_sliding": {"rope_type": "default", "rope_theta": self.rope_theta_sliding,
                                     "partial_rotary_factor": self.partial_rotary_factor_sliding}},
              "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": False, "lm_head_bias": False,
              "pad_token_id": self.pad_token_id, "bos_token_id": self.bos_token_id, "eos_token_id": eos,
              "dtype": self.torch_dtype}
        if self.router_norm_eps != self.rms_norm_eps:
            hf["router_norm_eps"] = self.router_norm_eps
        if self.skip_expert_output != "zero":
            hf["skip_expert_output"] = self.skip_expert_output
        if self.expert_quantization is not None:
            fmt = _WRITTEN_FORMATS[self.expert_quantization]
            hf["quantization_config"] = {
                "quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "format": fmt, "input_activations": None,
                                              "output_activations": None,
                                              "weights": dict(_WRITTEN_WEIGHTS[self.expert_quantization])}},
                "ignore": [EXPERTS_ONLY], "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {}}
        return hf

    def replace(self, **changes: Any) -> "ZayaConfig":
        return dataclasses.replace(self, **changes)

    def with_expert_dtype(self, expert_dtype: str | None, where: str = "the checkpoint") -> "ZayaConfig":
        """The config of a model that holds the experts as ``expert_dtype``: None keeps them as stored;
        "fp8" quantizes dense experts when they are loaded (a checkpoint already in fp8 loads as it is)."""
        if expert_dtype in (None, self.expert_quantization):
            return self
        if expert_dtype not in QUANTIZE_TO:
            raise ConfigError(f"expert_dtype={expert_dtype!r} is not supported: pass None (experts as stored) or "
                              f"one of {QUANTIZE_TO} (quantized when loaded).")
        if self.expert_quantization is not None:
            raise ConfigError(f"{where} stores {self.expert_quantization} experts: expert_dtype={expert_dtype!r} would "
                              f"quantize them twice. Load them as stored (leave expert_dtype unset) or use a bf16 "
                              f"checkpoint.")
        return self.replace(expert_quantization=expert_dtype)


_FIELD_NAMES = {f.name for f in dataclasses.fields(ZayaConfig)}
# where a canonical field comes from in an original-layout config.json (for error messages)
_ORIGINAL_NAMES = {
    "num_hidden_layers": "len(zaya_layers) / 2", "num_attention_heads": "cca_num_q_heads",
    "num_key_value_heads": "num_query_groups_list", "head_dim": "head_dim / kv_channels",
    "num_experts": "the zaya_layers expert count", "moe_intermediate_size": "ffn_hidden_size_list / 2",
    "router_hidden_size": "zaya_mlp_expansion", "rms_norm_eps": "norm_epsilon", "sliding_window": "swa_layers + 1",
    "rope_theta_sliding": "swa_rotary_base",
}


def expert_format(qc: dict) -> str:
    """fp8 or mxfp4 from a compressed-tensors ``quantization_config``; ConfigError for anything zaya1 cannot
    load exactly."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ConfigError(f"quantization_config: {what}. zaya1 loads compressed-tensors checkpoints whose "
                              f"experts only are quantized, as fp8 (float-/naive-quantized, channel or tensor scales) or "
                              f"mxfp4 (mxfp4-pack-quantized); use such a checkpoint or a bf16 one.")

    need(isinstance(qc, dict), f"must be a JSON object, got {qc!r}")
    need(qc.get("quant_method") == "compressed-tensors",
         f"quant_method={qc.get('quant_method')!r} is not supported (only 'compressed-tensors')")
    groups = qc.get("config_groups")
    need(isinstance(groups, dict) and bool(groups), "config_groups is missing or empty")
    for name in ("kv_cache_scheme", "sparsity_config", "transform_config"):
        need(not qc.get(name), f"{name}={qc.get(name)!r} is not supported")
    formats = set()
    for gname, group in groups.items():
        need(isinstance(group, dict) and isinstance(group.get("weights"), dict),
             f"config_groups.{gname} has no 'weights' scheme")
        w, fmt = group["weights"], group.get("format") or qc.get("format")
        need(fmt in _FORMATS, f"config_groups.{gname}: format={fmt!r} is not supported")
        kind = _FORMATS[fmt]
        need(w.get("type") == "float" and w.get("symmetric", True) is True and not w.get("dynamic"),
             f"config_groups.{gname}.weights must be static symmetric float weights, got {w!r}")
        if kind == FP8:
            need(w.get("num_bits") == 8 and w.get("strategy") in ("channel", "tensor"),
                 f"config_groups.{gname}.weights: fp8 needs num_bits 8 and strategy 'channel' or 'tensor', got "
                 f"num_bits={w.get('num_bits')!r} strategy={w.get('strategy')!r}")
        else:
            need(w.get("num_bits") == 4 and w.get("strategy") == "group" and w.get("group_size") == MX_GROUP,
                 f"config_groups.{gname}.weights: mxfp4 needs num_bits 4 in groups of {MX_GROUP}, got "
                 f"num_bits={w.get('num_bits')!r} group_size={w.get('group_size')!r}")
        for side in ("input_activations", "output_activations"):
            act = group.get(side)
            need(act is None or (side == "input_activations" and act.get("dynamic") is True),
                 f"config_groups.{gname}.{side}={act!r}: only dynamic input activations are supported")
        formats.add(kind)
    need(len(formats) == 1, f"config groups mix formats {sorted(formats)}")
    return formats.pop()


# fields only an original-layout config has, also where it gives scalars and no zaya_layers (the legacy-8B json)
_ORIGINAL_SCALARS = ("zaya_mlp_expansion", "ffn_hidden_size", "ffn_hidden_size_list", "norm_epsilon",
                     "num_query_groups", "num_query_groups_list", "cca_num_q_heads")


def _require(raw: dict, *names: str) -> None:
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"required field(s) {missing} missing. Restore them from the original config.json.")


def _int(raw: dict, name: str, default: Any = None) -> Any:
    value = raw.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value != int(value)):
        raise ConfigError(f"{name}={value!r} must be an integer.")
    return None if value is None else int(value)


def _float(raw: dict, name: str, default: Any = None) -> Any:
    value = raw.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name}={value!r} must be a number.")
    return None if value is None else float(value)


def _dict(raw: dict, name: str) -> dict:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {value!r}.")
    return value


def _head_dim(raw: dict, hidden: int, num_heads: Any, *names: str) -> int:
    """head_dim from the first of ``names`` that is set, else hidden_size / num_attention_heads."""
    for name in names:
        if raw.get(name) is not None:
            return _int(raw, name)
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ConfigError(f"num_attention_heads={raw.get('num_attention_heads')!r} must be a positive integer "
                          f"(head_dim is hidden_size / num_attention_heads when {' / '.join(names)} is absent). "
                          f"Fix config.json.")
    return hidden // num_heads


def _common(raw: dict) -> dict:
    return dict(
        vocab_size=_int(raw, "vocab_size"),
        hidden_size=_int(raw, "hidden_size"),
        cca_time0=_int(raw, "cca_time0", 2),
        cca_time1=_int(raw, "cca_time1", 2),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        pad_token_id=raw.get("pad_token_id", 0),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id") if raw.get("eos_token_id") is not None else [],
        torch_dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "bfloat16"),
    )


def _reject_biases(raw: dict) -> None:
    for name in ("attention_bias", "lm_head_bias", "add_bias_linear"):
        if raw.get(name):
            raise ConfigError(f"{name}=true is not supported (ZAYA1 has no such biases). Set it to false.")


def _fields_from_hf(raw: dict) -> dict:
    _require(raw, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "num_experts", "moe_intermediate_size")
    _reject_biases(raw)
    if _int(raw, "num_experts_per_tok", 1) != 1:
        raise ConfigError(f"num_experts_per_tok={raw['num_experts_per_tok']} is not supported: ZAYA1 routes "
                          f"top-1. Set it to 1.")
    layers = _int(raw, "num_hidden_layers")
    type_map = {"hybrid": FULL, "hybrid_sliding": SLIDING}
    types = raw.get("layer_types") or ["hybrid"] * layers
    if not isinstance(types, list):
        raise ConfigError(f"layer_types must be a list, got {types!r}.")
    unknown = sorted({str(t) for t in types if t not in type_map})
    if unknown:
        raise ConfigError(f"unknown layer type(s) {unknown} in layer_types; supported: {sorted(type_map)}.")
    # upstream: without rope_parameters both layer types rotate half of each head; a layer type's own dict
    # without partial_rotary_factor rotates all of it (its rope init's default, 1.0); a layer type without a
    # dict has no layers (upstream fails on it otherwise)
    rope = _dict(raw, "rope_parameters")
    full, sliding = _dict(rope, "hybrid"), _dict(rope, "hybrid_sliding")
    for params in (full, sliding):
        if params.get("rope_type", "default") != "default":
            raise ConfigError(f"rope_type={params['rope_type']!r} is not supported; ZAYA1 uses 'default'.")
    rotary_default = 0.5 if not rope else 1.0
    eps = _float(raw, "rms_norm_eps", 1e-5)
    num_heads = _int(raw, "num_attention_heads")
    return dict(
        _common(raw),
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=_int(raw, "num_key_value_heads"),
        head_dim=_head_dim(raw, _int(raw, "hidden_size"), num_heads, "head_dim"),
        num_experts=_int(raw, "num_experts"),
        moe_intermediate_size=_int(raw, "moe_intermediate_size"),
        router_hidden_size=_int(raw, "router_hidden_size", 256),
        rms_norm_eps=eps,
        router_norm_eps=_float(raw, "router_norm_eps", eps),  # zaya1's own fields (to_hf_dict), else upstream's
        skip_expert_output=raw.get("skip_expert_output", "zero"),
        layer_types=[type_map[t] for t in types],
        sliding_window=_int(raw, "sliding_window"),
        rope_theta=_float(full, "rope_theta", _float(raw, "rope_theta", 5_000_000.0)),
        rope_theta_sliding=_float(sliding, "rope_theta", 10_000.0),
        partial_rotary_factor=_float(full, "partial_rotary_factor", rotary_default),
        partial_rotary_factor_sliding=_float(sliding or full, "partial_rotary_factor", rotary_default),
        hidden_act=raw.get("hidden_act", "silu"),
        max_position_embeddings=_int(raw, "max_position_embeddings", 131072),
        layout="hf",
    )


def _uniform(values: list, name: str) -> Any:
    if len(set(map(str, values))) != 1:
        raise ConfigError(f"{name} differs between layers ({values}); only uniform layers are supported.")
    return values[0]


def _half_layers(raw: dict) -> list:
    """zaya_layers, or where a config gives scalars instead (the legacy-8B json: num_hidden_layers counts
    half-layers, num_experts every MoE half-layer's experts) the list they describe."""
    if "zaya_layers" in raw:
        return raw["zaya_layers"]
    _require(raw, "num_hidden_layers", "num_experts")
    half, experts = _int(raw, "num_hidden_layers"), _int(raw, "num_experts")
    if half <= 0 or half % 2:
        raise ConfigError(f"num_hidden_layers={half} must be a positive even number of half-layers (attention and "
                          f"MoE alternate) when zaya_layers is absent. Fix config.json or give zaya_layers.")
    return ["a", experts] * (half // 2)


def _fields_from_original(raw: dict) -> dict:
    _require(raw, "vocab_size", "hidden_size")
    _reject_biases(raw)
    kinds = _half_layers(raw)
    if not isinstance(kinds, list) or not kinds or len(kinds) % 2:
        raise ConfigError(f"zaya_layers must be a non-empty list of even length, got {kinds!r}.")
    attn, moe = kinds[0::2], kinds[1::2]
    if any(k != "a" for k in attn) or any(isinstance(k, bool) or not isinstance(k, int) for k in moe):
        raise ConfigError(f"zaya_layers must alternate 'a' (attention) and an expert count (MoE), starting "
                          f"with 'a'; got {kinds!r}.")
    n = len(kinds)  # zaya_layers wins over num_hidden_layers where both are given (the fork defaults it to 120)
    if _int(raw, "moe_router_topk", 1) != 1:
        raise ConfigError(f"moe_router_topk={raw['moe_router_topk']} is not supported: ZAYA1 routes top-1. "
                          f"Set it to 1.")
    if raw.get("activation_func", "swiglu") != "swiglu" or raw.get("gated_linear_unit", True) is False:
        raise ConfigError("only gated SwiGLU experts are supported (activation_func 'swiglu').")
    for flag in ("zaya_use_mod", "zaya_use_eda", "scale_residual_merge"):
        if raw.get(flag, True) is False:
            raise ConfigError(f"{flag}=false is not supported: ZAYA1 checkpoints set it to true.")

    def per_layer(name: str, default: Any = None) -> list:
        value = raw.get(name, default)
        if isinstance(value, list) and len(value) != n:
            raise ConfigError(f"{name} has {len(value)} entries but zaya_layers has {n}; give one entry per "
                              f"half-layer.")
        return list(value) if isinstance(value, list) else [value] * n

    hidden = _int(raw, "hidden_size")
    q_heads = per_layer("cca_num_q_heads")
    kv_heads = per_layer("num_query_groups_list", raw.get("num_key_value_heads", raw.get("num_query_groups")))
    ffn = per_layer("ffn_hidden_size_list", raw.get("ffn_hidden_size"))
    router = per_layer("zaya_mlp_expansion", 256)
    num_heads = _int(raw, "num_attention_heads")
    if q_heads[0] is None and (num_heads is None or num_heads <= 0):
        raise ConfigError(f"cca_num_q_heads is absent and num_attention_heads={num_heads!r}: one of them must "
                          f"give the CCA query heads. Fix config.json.")
    # without cca_num_q_heads: the fork counts twice the query heads in num_attention_heads (head_dim =
    # hidden / num_attention_heads); a config that states head_dim (the legacy-8B json) counts them once
    if q_heads[0] is not None:
        nq = _uniform(q_heads[0::2], "cca_num_q_heads")
    else:
        nq = num_heads if raw.get("head_dim") is not None else num_heads // 2
    nkv = _uniform(kv_heads[0::2], "num_query_groups_list")
    head_dim = _head_dim(raw, hidden, num_heads, "head_dim", "kv_channels")
    experts = _uniform(moe, "zaya_layers expert counts")
    if nkv is None:
        raise ConfigError("the KV head count is missing: set num_query_groups_list (per half-layer) or "
                          "num_key_value_heads in config.json.")
    ffn_width = _int({"ffn_hidden_size_list": _uniform(ffn[1::2], "ffn_hidden_size_list")},
                     "ffn_hidden_size_list")
    if ffn_width is None:
        raise ConfigError("ffn_hidden_size_list (or ffn_hidden_size) is missing: it gives the experts' fc1 width. "
                          "Restore it from the original config.json.")
    if ffn_width % 2:
        raise ConfigError(f"ffn_hidden_size_list MoE entries must be even (gate + up), got {ffn_width!r}.")
    swa = per_layer("swa_layers", 0)[0::2] if raw.get("swa_layers") else [0] * (n // 2)
    swa = [_int({"swa_layers": v or 0}, "swa_layers") for v in swa]
    windows = [v for v in swa if v > 0]
    return dict(
        _common(raw),
        num_hidden_layers=n // 2,
        num_attention_heads=_int({"cca_num_q_heads": nq}, "cca_num_q_heads"),
        num_key_value_heads=_int({"num_query_groups_list": nkv}, "num_query_groups_list"),
        head_dim=head_dim,
        num_experts=experts,
        moe_intermediate_size=ffn_width // 2,
        router_hidden_size=_int({"zaya_mlp_expansion": _uniform(router[1::2], "zaya_mlp_expansion")},
                                "zaya_mlp_expansion"),
        rms_norm_eps=_float(raw, "norm_epsilon", 1e-5),
        router_norm_eps=1e-6,  # the original implementation's router norm ignores the config (doc P2)
        skip_expert_output="scaled_input",
        layer_types=[SLIDING if v > 0 else FULL for v in swa],
        sliding_window=max(windows) + 1 if windows else None,  # Megatron counts previous tokens only
        rope_theta=_float(raw, "rope_theta") or 10_000.0,
        rope_theta_sliding=_float(raw, "swa_rotary_base") or 10_000.0,
        partial_rotary_factor=_float(raw, "partial_rotary_factor", 0.5),
        partial_rotary_factor_sliding=_float(raw, "partial_rotary_factor", 0.5),
        max_position_embeddings=_int(raw, "max_position_embeddings", 4096),
        layout="original",
    )
