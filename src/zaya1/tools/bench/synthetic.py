"""The synthetic benchmark model: ZAYA1 with the real widths, a few hybrid layers and random weights,
written as an HF-layout checkpoint that zaya1 and transformers both load."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

SYNTHETIC_VERSION = 2  # bump when write_synthetic_checkpoint changes the weights


def synthetic_hf_config(layers: int) -> dict:
    """transformers' ZAYA1 config.json with the real widths and ``layers`` hybrid layers."""
    return {
        "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "vocab_size": 262272, "hidden_size": 2048,
        "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
        "hidden_act": "silu", "moe_intermediate_size": 2048, "num_experts": 16, "num_experts_per_tok": 1,
        "router_hidden_size": 256, "cca_time0": 2, "cca_time1": 2, "rms_norm_eps": 1e-5,
        "layer_types": ["hybrid"] * layers,
        "rope_parameters": {
            "hybrid": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.5},
            "hybrid_sliding": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}},
        "sliding_window": None, "max_position_embeddings": 131072, "tie_word_embeddings": True,
        "attention_bias": False, "lm_head_bias": False, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 106,
        "initializer_range": 0.02, "dtype": "bfloat16",
    }


def write_synthetic_checkpoint(path: str | Path, layers: int = 2, seed: int = 0) -> Path:
    """Write a random ZAYA1 (real widths, bf16, HF layout: one safetensors shard per layer plus an index).

    Scales: linear weights ~ N(0, 1/fan_in), norms and residual scales ~ U(0.9, 1.1), small biases, tied
    embedding ~ N(0, 0.05^2) (logits of a few units) with an input scale of ~20 (a residual stream of RMS ~1,
    so that tokens differ more than the attention output they share). The router MLP's fc2 and out_proj rows
    have zero mean, which removes the offset GELU's positive mean would give every token alike: top-1
    choices then spread over the 16 experts (all or nearly all used by a 128-token prompt, the busiest with
    ~15% of the tokens) with route weights well below 1, as a trained, balanced router's do. Balancing biases
    are 0 for the experts and -1 for the skip class (transformers' initial values), so the skip class is
    never chosen. ``seed`` fixes every value."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_hf_config(layers)
    hidden, vocab, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["moe_intermediate_size"]
    experts, router, q_width = cfg["num_experts"], cfg["router_hidden_size"], cfg["num_attention_heads"] * cfg["head_dim"]
    kv_width = cfg["num_key_value_heads"] * cfg["head_dim"]
    channels = q_width + kv_width
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape, std: float) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.bfloat16)
        flat = out.view(-1)
        for start in range(0, flat.numel(), 1 << 24):  # fp32 temporaries of at most 64 MB
            n = min(1 << 24, flat.numel() - start)
            flat[start:start + n] = torch.randn(n, generator=gen) * std
        return out

    def near_one(*shape) -> torch.Tensor:
        return (0.9 + 0.2 * torch.rand(shape, generator=gen)).to(torch.bfloat16)

    def centred(rows: int, cols: int, std: float) -> torch.Tensor:
        w = torch.randn(rows, cols, generator=gen) * std
        return (w - w.mean(dim=1, keepdim=True)).to(torch.bfloat16)

    weight_map: dict[str, str] = {}

    def save(tensors: dict, name: str) -> None:
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    save({"model.embed_tokens.weight": normal(vocab, hidden, std=0.05),
          "model.input_hidden_states_scale": near_one(hidden) * 20,
          "model.input_hidden_states_bias": normal(hidden, std=0.01),
          "model.norm.weight": near_one(hidden)}, "model-embed.safetensors")
    for i in range(layers):
        p = f"model.layers.{i}."
        qkv, gate = p + "self_attn.qkv_proj.", p + "mlp.gate."
        t = {p + "input_layernorm.weight": near_one(hidden),
             p + "post_attention_layernorm.weight": near_one(hidden),
             qkv + "q_proj.weight": normal(q_width, hidden, std=hidden ** -0.5),
             qkv + "k_proj.weight": normal(kv_width, hidden, std=hidden ** -0.5),
             qkv + "v_proj_current.weight": normal(kv_width // 2, hidden, std=hidden ** -0.5),
             qkv + "v_proj_delayed.weight": normal(kv_width // 2, hidden, std=hidden ** -0.5),
             qkv + "conv_qk_depthwise.weight": normal(channels, 1, 2, std=0.5),
             qkv + "conv_qk_depthwise.bias": normal(channels, std=0.02),
             qkv + "conv_qk_grouped.weight": normal(channels, cfg["head_dim"], 2, std=(2 * cfg["head_dim"]) ** -0.5),
             qkv + "conv_qk_grouped.bias": normal(channels, std=0.02),
             p + "self_attn.qk_norm.temp": near_one(cfg["num_key_value_heads"]),
             p + "self_attn.o_proj.weight": normal(hidden, q_width, std=q_width ** -0.5),
             gate + "down_proj.weight": normal(router, hidden, std=hidden ** -0.5),
             gate + "down_proj.bias": normal(router, std=0.02),
             gate + "router_mlp.norm.weight": near_one(router),
             gate + "router_mlp.fc1.weight": normal(router, router, std=2 * router ** -0.5),
             gate + "router_mlp.fc1.bias": normal(router, std=0.02),
             gate + "router_mlp.fc2.weight": centred(router, router, std=2 * router ** -0.5),
             gate + "router_mlp.fc2.bias": normal(router, std=0.02),
             gate + "router_mlp.out_proj.weight": centred(experts + 1, router, std=2 * router ** -0.5),
             gate + "balancing_biases": torch.cat([torch.zeros(experts), torch.tensor([-1.0])]),
             p + "mlp.experts.gate_up_proj": normal(experts, 2 * inter, hidden, std=hidden ** -0.5),
             p + "mlp.experts.down_proj": normal(experts, hidden, inter, std=inter ** -0.5)}
        if i > 0:
            t[gate + "router_states_scale"] = near_one(router) * 0.5
        for merge in ("post_attention_residual_scale", "post_mlp_residual_scale"):
            t[p + merge + ".hidden_states_scale"] = near_one(hidden)
            t[p + merge + ".hidden_states_bias"] = normal(hidden, std=0.02)
            t[p + merge + ".residual_scale"] = near_one(hidden)
            t[p + merge + ".residual_bias"] = normal(hidden, std=0.02)
        save(t, f"model-layer-{i:03d}.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    (path / "synthetic.json").write_text(json.dumps(_marker(layers, seed)))
    return path


def _marker(layers: int, seed: int) -> dict:
    """synthetic.json: what a cached synthetic checkpoint was written from."""
    return {"layers": layers, "seed": seed, "version": SYNTHETIC_VERSION}


def synthetic_checkpoint(cache_dir: str | None, layers: int, seed: int) -> tuple[Path, object]:
    """(checkpoint dir, TemporaryDirectory to keep alive or None). A ``cache_dir`` holding the same synthetic
    model is reused; otherwise the model is written there (or into a temporary directory)."""
    if cache_dir:
        path = Path(cache_dir)
        marker = path / "synthetic.json"
        if marker.is_file() and json.loads(marker.read_text()) == _marker(layers, seed):
            return path, None
        return write_synthetic_checkpoint(path, layers, seed), None
    tmp = tempfile.TemporaryDirectory(prefix="zaya1-bench-")
    return write_synthetic_checkpoint(tmp.name, layers, seed), tmp
