"""Test support: tolerances, golden-set paths, and tiny random ZAYA1 checkpoints in the upstream Hugging Face
layout, built with ``transformers`` itself.

The upstream reference needs transformers >= 5.23 (``transformers.ZayaForCausalLM``); ``upstream()`` skips the
calling test with the reason when it is older or absent (the NxDI venv pins transformers 4.57), and fails it
instead under ``ZAYA1_REQUIRE_UPSTREAM=1`` (CI's CPU job, so a missing reference never passes as a skip).

Every parameter gets a non-default random value (the distributions of the golden sets' README), so a test
that compares our implementation with upstream fails on any mistake in any weight's role. The router
down-projection is scaled to give router states of RMS ~0.05-0.1, so routing is non-trivial and the router
norm's epsilon matters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

if TYPE_CHECKING:
    import transformers

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
GOLDEN_SETS = ("zaya1-original-tiny", "zaya1-original-gqa")
TOL = 1e-4  # max |dlogit| in float32, against upstream transformers or the golden data


def force_product(monkeypatch, product: str | None) -> None:
    """Run zaya1's fast bf16 CPU path with ``product`` (a name of kernels.PRODUCTS) for every product in the
    row range it is a candidate at (F.linear elsewhere), as a CPU whose measurements chose it would; None:
    the products measured on this CPU. The exact switch is off either way."""
    from zaya1 import kernels

    if product is not None:
        low, high = kernels.ROWS[product]
        monkeypatch.setattr(kernels, "choose", lambda weight, rows: product if low <= rows <= high else "linear")
    monkeypatch.setattr(kernels, "EXACT", False)


def upstream():
    """The ``transformers`` module holding upstream ZAYA1 (>= 5.23), else skip the calling test saying why."""
    try:
        import transformers
    except ImportError:
        missing = "transformers is not installed"
    else:
        if hasattr(transformers, "ZayaForCausalLM"):
            return transformers
        missing = f"transformers {transformers.__version__} has no ZayaForCausalLM"
    reason = f"needs upstream transformers >= 5.23 as the reference ({missing}; pip install 'transformers>=5.23')"
    if os.environ.get("ZAYA1_REQUIRE_UPSTREAM") == "1":
        pytest.fail(f"ZAYA1_REQUIRE_UPSTREAM=1: {reason}")
    pytest.skip(reason)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


# non-default values wherever upstream has a default, so that a field we failed to read shows up
ROPE = {"hybrid": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5},
        "hybrid_sliding": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}}
TINY_CONFIGS = {
    # 4 query heads share 2 KV heads (2 per group), head_dim 64, a quarter of each head rotated
    "gqa4x2": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                   rope_parameters={t: dict(p, partial_rotary_factor=0.25) for t, p in ROPE.items()}),
    # ZAYA1's head layout: 8 query heads, 2 KV heads (4 per group)
    "gqa8x2": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=32),
    # sliding-window layers (window 4: the current token and 3 previous ones) between full-attention layers
    "sliding": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"], sliding_window=4),
    # one query head per KV head
    "mha2x2": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=32),
    # ZAYA1-74B-preview's structure (test_checkpoint_family.py): 16 query heads over 2 KV heads, query width half
    # the hidden size, 24 experts as wide as the hidden size, full and sliding-window layers alternating
    "zaya74b": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=2, head_dim=4,
                    num_experts=24, moe_intermediate_size=128, layer_types=["hybrid", "hybrid_sliding"] * 2,
                    sliding_window=4),
}

COMMON = dict(vocab_size=160, num_experts=4, moe_intermediate_size=16, router_hidden_size=16, rms_norm_eps=2e-5,
              max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, bos_token_id=2,
              eos_token_id=1)


def hf_config(name: str, **changes) -> transformers.ZayaConfig:
    fields = dict(COMMON, rope_parameters=ROPE)
    fields.update(TINY_CONFIGS[name], **changes)
    return upstream().ZayaConfig(**fields)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, router_state_rms: float = 0.07) -> None:
    """Give every parameter and buffer of an upstream ZayaForCausalLM a non-default random value."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("embed_tokens.weight"):
            normal(p, 0.2)
        elif name == "lm_head.weight":
            if model.config.tie_word_embeddings:
                continue  # tied to the embedding
            normal(p, 1 / math.sqrt(p.shape[1]))
        elif "gate.down_proj.weight" in name:
            normal(p, router_state_rms / math.sqrt(p.shape[1]))
        elif "gate.down_proj.bias" in name:
            normal(p, router_state_rms / 2)
        elif "conv_qk_depthwise.weight" in name:
            normal(p, 0.5)
        elif "conv_qk_grouped.weight" in name:
            normal(p, 1 / math.sqrt(p.shape[1] * p.shape[2]))
        elif "conv_qk" in name and leaf == "bias":
            normal(p, 0.1)
        elif name.endswith("qk_norm.temp"):
            uniform(p, 0.5, 2.5)
        elif name.endswith("router_states_scale"):
            uniform(p, 0.5, 1.5)
        elif leaf in ("hidden_states_bias", "residual_bias") or name.endswith("input_hidden_states_bias"):
            normal(p, 0.05)
        elif p.dim() == 1 and (leaf == "weight" or leaf.endswith("scale")):
            uniform(p, 0.6, 1.4)  # RMSNorm weights, residual scales, input_hidden_states_scale
        elif leaf == "bias":
            normal(p, 0.05)  # router MLP biases
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            normal(p, 1 / math.sqrt(p.shape[2]))
        elif p.dim() == 2:
            normal(p, 1 / math.sqrt(p.shape[1]))
        else:
            raise AssertionError(f"no random rule for parameter {name}")
    for name, b in model.named_buffers():
        if name.endswith("balancing_biases"):
            uniform(b, -0.05, 0.05)
            b[-1] = -1.0  # the skip class keeps its initial bias (it is never chosen)


def build_hf_checkpoint(directory: Path, config: transformers.ZayaConfig, seed: int, prepare=None):
    """Save a random upstream model to ``directory`` (safetensors) and return it reloaded from there, eager,
    float32: the reference every parity test compares with. ``prepare(model)`` may adjust it before saving."""
    model = upstream().ZayaForCausalLM._from_config(config, attn_implementation="eager",
                                                      experts_implementation="eager", dtype=torch.float32)
    randomize_(model, seed)
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
    model.save_pretrained(directory)
    return load_hf(directory)


def write_large_checkpoint(directory: Path, layers: int = 3, expert_width: int = 1024) -> int:
    """A float32 HF-layout checkpoint of random weights (for peak-memory tests; ~355 MB by default); returns
    its size."""
    cfg = upstream().ZayaConfig(vocab_size=4096, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=8,
                                  num_key_value_heads=2, head_dim=128, num_experts=8, moe_intermediate_size=expert_width,
                                  router_hidden_size=64, tie_word_embeddings=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in upstream().ZayaForCausalLM(cfg).state_dict().items()
                  if k != "lm_head.weight" and "rotary_emb" not in k}
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}, directory / "model.safetensors")
    cfg.save_pretrained(directory)
    return (directory / "model.safetensors").stat().st_size


def load_hf(directory: Path, dtype: torch.dtype = torch.float32):
    model = upstream().ZayaForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                         experts_implementation="eager", dtype=dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------- tokenizer
SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unk>"]  # ids 0-5
WORDS = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁Hello", "▁world", "▁user", "▁model", "▁capital", "▁of",
         "▁France", "▁is", "▁Paris", "▁a", "▁dog", "▁ran", "▁and", "▁big", "▁small", "▁red", "▁blue", "▁I",
         "▁you", "▁it", "▁day", "▁night", "."]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                 "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def prefer_words_(model) -> None:
    """An untied lm_head that favours the test tokenizer's whole-word ids (262-289): the model writes words."""
    words = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
    words[262:290] = True
    model.lm_head.weight[words] *= 2.0
    model.lm_head.weight[~words] *= 0.05


def save_tokenizer(directory: Path):
    """A SentencePiece-style tokenizer (Metaspace word spaces, byte fallback for every other character) with
    a chat template, saved through transformers: like ZAYA1-8B's, plain text gets <bos> ... <end_of_turn>.
    Returns the transformers tokenizer; its vocabulary (~320 ids) fits a model with vocab_size=320."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    transformers = upstream()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["▁"]
    pieces = ([(s, 0.0) for s in SPECIALS] + [(f"<0x{b:02X}>", -20.0) for b in range(256)]
              + [(w, -2.0) for w in WORDS] + [(c, -8.0) for c in letters])
    raw = Tokenizer(models.Unigram(pieces, unk_id=5, byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    raw.add_special_tokens(SPECIALS)
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A <end_of_turn>",
                                                       special_tokens=[("<bos>", 2), ("<end_of_turn>", 4)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>",
                                               pad_token="<pad>", unk_token="<unk>", chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)


# ---------------------------------------------------------------------------------------------- quantized checkpoints
IGNORE = "re:^(?!.*experts).*$"  # the published MXFP4-Experts config's ignore (test/data/configs/README.md)


def compressed_tensors():
    try:
        import compressed_tensors
    except ImportError:
        reason = "needs compressed-tensors (pip install -e '.[test]') to write and dequantize the reference"
        if os.environ.get("ZAYA1_REQUIRE_UPSTREAM") == "1":
            pytest.fail(f"ZAYA1_REQUIRE_UPSTREAM=1: {reason}")
        pytest.skip(reason)
    return compressed_tensors


def bf16_state(hf) -> dict[str, torch.Tensor]:
    """``hf``'s checkpoint tensors in bf16 (the published checkpoints' dtype), router balancing biases fp32."""
    return {k: v.to(torch.bfloat16) if "balancing" not in k else v for k, v in hf.state_dict().items()
            if "rotary" not in k and k != "lm_head.weight"}


def write_quantized(hf, path, preset: str) -> None:
    """``hf``'s weights with every expert projection quantized by compressed-tensors: its per-expert Linear
    modules get the preset's scheme, weight scales from min/max (``calculate_qparams``, as llm-compressor's
    observers), are compressed by ``ModelCompressor`` and saved beside the dense rest; config.json gains the
    compressor's quantization_config."""
    compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils import calculate_qparams

    config, size = hf.config, hf.config.moe_intermediate_size
    dense = bf16_state(hf)
    experts = nn.Module()  # the projections under their checkpoint names
    for i in range(config.num_hidden_layers):
        gate_up = dense.pop(f"model.layers.{i}.mlp.experts.gate_up_proj")
        down = dense.pop(f"model.layers.{i}.mlp.experts.down_proj")
        for e in range(config.num_experts):
            for name, w in (("gate_proj", gate_up[e, :size]), ("up_proj", gate_up[e, size:]), ("down_proj", down[e])):
                linear = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
                linear.weight.data.copy_(w)
                parent = experts
                for part in f"model.layers.{i}.mlp.experts.{e}".split("."):
                    if not hasattr(parent, part):
                        parent.add_module(part, nn.Module())
                    parent = getattr(parent, part)
                parent.add_module(name, linear)
    parts = dict(PRESET_SCHEMES[preset])
    if parts.get("input_activations") is not None and not parts["input_activations"].dynamic:
        del parts["input_activations"]  # weight-only: static activation scales would need calibration data
    scheme = QuantizationScheme(targets=["Linear"], **parts)
    apply_quantization_config(experts, QuantizationConfig(config_groups={"group_0": scheme}, ignore=[IGNORE]))
    for module in experts.modules():
        if getattr(module, "quantization_scheme", None) is None:
            continue
        args, w = module.quantization_scheme.weights, module.weight.data
        if args.strategy == "channel":
            lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
        elif args.strategy == "tensor":
            lo, hi = w.amin(), w.amax()
        else:
            groups = w.unflatten(-1, (-1, args.group_size))
            lo, hi = groups.amin(-1), groups.amax(-1)
        scale, _ = calculate_qparams(lo, hi, args)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
    compressor = ModelCompressor.from_pretrained_model(experts)
    compressor.compress_model(experts)
    compressor.quantization_config.ignore = [IGNORE]
    save_file(dense | {k: v.contiguous() for k, v in experts.state_dict().items()}, str(path / "model.safetensors"))
    config.save_pretrained(path)
    compressor.update_config(str(path))


@contextlib.contextmanager
def transformers_merges_zaya_experts():
    """transformers' Qwen2-style per-expert merge registered for "zaya" while the block runs."""
    from transformers import conversion_mapping as cm

    cm.register_checkpoint_conversion_mapping("zaya", cm.get_checkpoint_conversion_mapping("qwen2_moe"))
    try:
        yield
    finally:
        cm._checkpoint_conversion_mapping_cache.pop("zaya", None)
        cm.USER_REGISTERED_MAPPINGS.discard("zaya")
