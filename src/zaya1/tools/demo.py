"""The embedded default model: a tiny ZAYA1 with random weights (fixed seed) and a byte-level tokenizer, so
``zaya1 generate`` runs on a fresh machine without a checkpoint. Its output is gibberish by construction."""

from __future__ import annotations

import torch

from ..config import ZayaConfig
from ..tokenizer import Tokenizer
from ..model import ZayaForCausalLM

SPECIALS = ["<pad>", "<eos>", "<bos>"]  # ids 0, 1, 2; the 256 bytes follow


def demo_config() -> ZayaConfig:
    return ZayaConfig(vocab_size=259, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, num_experts=4, moe_intermediate_size=128,
                      router_hidden_size=32, max_position_embeddings=2048, rope_theta=10_000.0,
                      pad_token_id=0, eos_token_id=[1], bos_token_id=2, torch_dtype="float32")


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
    return init_random_(ZayaForCausalLM(demo_config()), seed).eval()


def demo_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(SPECIALS)
    return Tokenizer(raw, eos_token_ids=[1])
