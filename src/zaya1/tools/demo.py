"""The embedded default model: a tiny ZAYA1 with random weights (fixed seed) and a character tokenizer over
printable ASCII, so ``zaya1 generate`` runs on a fresh machine without a checkpoint. It samples by default
(its generation_config), so its output is a random string of printable characters: gibberish by
construction, and recognisably so."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer as RawTokenizer, decoders, models, normalizers

from ..config import ZayaConfig
from ..generation_config import GenerationDefaults
from ..tokenizer import Tokenizer
from ..model import ZayaForCausalLM

EOS = "<eos>"  # id 0, the only special token
CHARACTERS = [chr(c) for c in range(32, 127)]  # printable ASCII, ids 1-95: every other token prints


def demo_config() -> ZayaConfig:
    return ZayaConfig(vocab_size=1 + len(CHARACTERS), hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, num_experts=4, moe_intermediate_size=128,
                      router_hidden_size=32, max_position_embeddings=2048, rope_theta=10_000.0,
                      pad_token_id=None, eos_token_id=[0], bos_token_id=None, torch_dtype="float32")


def init_random_(model: ZayaForCausalLM, seed: int = 0) -> ZayaForCausalLM:
    """Random weights with ZAYA1-like scales: linear ~ N(0, 1/fan_in), norms and scales ~ 1, biases small,
    balancing biases 0 for real experts and -1 for the skip class."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("value_delayed", "balancing_biases")):
                continue
            if name.endswith(("scale", "norm.weight", "layernorm.weight", "temp")) or ".norm." in name:
                values = 1.0 + 0.2 * torch.rand(p.shape, generator=gen) - 0.1
            elif name.endswith("bias"):
                values = 0.02 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p.shape[-1] * (p.shape[-2] if name.endswith("conv_qk_grouped.weight") else 1)
                values = torch.randn(p.shape, generator=gen) / fan_in ** 0.5
            p.copy_(values)
        for layer in model.model.layers:
            layer.mlp.router.balancing_biases.zero_()[-1] = -1.0
            delayed = layer.self_attn.value_delayed
            delayed.copy_((torch.arange(delayed.numel()) >= delayed.numel() // 2).float())
    return model


def demo_model(seed: int = 0) -> ZayaForCausalLM:
    """Float32 on the CPU; sampling by default (greedy decoding of random weights repeats one character)."""
    model = init_random_(ZayaForCausalLM(demo_config()), seed).eval()
    model.generation_config = GenerationDefaults({"do_sample": True})
    return model


def demo_tokenizer() -> Tokenizer:
    """One token per printable ASCII character (no merges); any other character of a prompt reads as "?"."""
    raw = RawTokenizer(models.BPE(vocab={tok: i for i, tok in enumerate([EOS] + CHARACTERS)}, merges=[]))
    raw.normalizer = normalizers.Replace(Regex("[^ -~]"), "?")
    raw.decoder = decoders.Fuse()  # characters joined as they are
    raw.add_special_tokens([EOS])
    return Tokenizer(raw, eos_token_ids=[0])
