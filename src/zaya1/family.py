"""The published ZAYA1 checkpoints' structures at real width, rebuilt from what public sources state.

No published config.json could be read from a stored public source (test/data/configs/README.md lists what
was searched, what each source states, and the published parameter totals these structures reproduce:
test/unit/test_checkpoint_family.py). They are config.json-style dicts in each checkpoint's own layout, so
``ZayaConfig.from_dict`` reads them as it reads the real files; ``structure(name)`` returns one as a
``ZayaConfig`` (``zaya1 cost --model ZAYA1-74B-preview`` prices the 74B without its files).
"""

from __future__ import annotations

from .config import ZayaConfig
from .errors import ConfigError

_COMMON = dict(vocab_size=262272, bos_token_id=2, eos_token_id=106, pad_token_id=0, dtype="bfloat16",
               max_position_embeddings=131072)
# ZAYA1-8B in the HF layout (architecture doc 1.2; ZAYA1-reasoning-base and the -FP8/-MXFP4-Experts copies
# share it); all 40 layers full attention
ZAYA1_8B = dict(_COMMON, model_type="zaya", hidden_size=2048, num_hidden_layers=40, num_attention_heads=8,
                num_key_value_heads=2, head_dim=128, num_experts=16, num_experts_per_tok=1,
                moe_intermediate_size=2048, router_hidden_size=256, rms_norm_eps=1e-5, layer_types=["hybrid"] * 40,
                sliding_window=None, tie_word_embeddings=True,
                rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": 5000000, "partial_rotary_factor": 0.5},
                                 "hybrid_sliding": {"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5},
                                 "rope_type": "default"})
# ZAYA1-8B-legacy: the fields of the original-layout json as transcribed in the public sources: scalars, no
# zaya_layers, num_hidden_layers counting half-layers, num_attention_heads the real query heads with head_dim
ZAYA1_8B_LEGACY = dict(_COMMON, model_type="zaya", activation_func="swiglu", add_bias_linear=False, cca=True,
                       ffn_hidden_size=4096, gated_linear_unit=True, hidden_size=2048, head_dim=128, kv_channels=128,
                       moe_router_topk=1, norm_epsilon=1e-5, num_attention_heads=8, num_experts=16,
                       num_hidden_layers=80, num_key_value_heads=2, num_query_groups=2, partial_rotary_factor=0.5,
                       residual_in_fp32=True, rope_scaling=False, rope_theta=5000000, scale_residual_merge=True,
                       sliding_window=None, zaya_mlp_expansion=256, zaya_use_eda=True, zaya_use_mod=True)
# ZAYA1-base: the fork's per-half-layer lists (architecture doc 1.1)
ZAYA1_BASE = dict(_COMMON, model_type="zaya", hidden_size=2048, num_attention_heads=16, kv_channels=128,
                  num_key_value_heads=2, zaya_layers=["a", 16] * 40, cca_num_q_heads=[8, 0] * 40,
                  num_query_groups_list=[2, 0] * 40, ffn_hidden_size_list=[0, 4096] * 40,
                  zaya_mlp_expansion=[0, 256] * 40, norm_epsilon=1e-5, rope_theta=5000000, rope_scaling=False)
# ZAYA1-74B-preview: hidden 4096, 16 query / 2 KV heads of 128, 24 experts of width 4096, 60 hybrid layers of
# which every other one attends over a 4097-token window, tied embeddings (issue 17; the sources of the README)
ZAYA1_74B = dict(ZAYA1_8B, hidden_size=4096, num_hidden_layers=60, num_attention_heads=16, num_experts=24,
                 moe_intermediate_size=4096, layer_types=["hybrid", "hybrid_sliding"] * 30, sliding_window=4097)
# ZAYA1-74B-preview-legacy: 120 half-layers; Megatron's window counts previous tokens only (4096 = 4097 - 1)
ZAYA1_74B_LEGACY = dict(ZAYA1_BASE, hidden_size=4096, num_attention_heads=32, zaya_layers=["a", 24] * 60,
                        cca_num_q_heads=[16, 0] * 60, num_query_groups_list=[2, 0] * 60,
                        ffn_hidden_size_list=[0, 8192] * 60, zaya_mlp_expansion=[0, 256] * 60,
                        swa_layers=[0, 0, 4096, 0] * 30, swa_rotary_base=10000)

PUBLISHED = {"ZAYA1-8B": ZAYA1_8B, "ZAYA1-8B-legacy": ZAYA1_8B_LEGACY, "ZAYA1-base": ZAYA1_BASE,
             "ZAYA1-74B-preview": ZAYA1_74B, "ZAYA1-74B-preview-legacy": ZAYA1_74B_LEGACY}


def structure(name: str) -> ZayaConfig:
    """The rebuilt structure of the published checkpoint ``name`` (a key of PUBLISHED)."""
    if name not in PUBLISHED:
        raise ConfigError(f"{name!r} is not a published ZAYA1 checkpoint zaya1 knows the structure of; "
                          f"use one of {sorted(PUBLISHED)} or a checkpoint directory with config.json.")
    return ZayaConfig.from_dict(PUBLISHED[name])
