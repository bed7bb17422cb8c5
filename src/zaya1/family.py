"""The published ZAYA1 checkpoints' structures at real width: the published config.json of ZAYA1-8B and
ZAYA1-8B-legacy (published_configs/), and the others, whose config.json no stored public source gives,
rebuilt from what the public sources state (test/data/configs/README.md: sources, what was searched, and
the published parameter totals these structures reproduce, test/unit/test_checkpoint_family.py). They are
config.json dicts in each checkpoint's own layout, so ``ZayaConfig.from_dict`` reads them as it reads the
real files; ``structure(name)`` returns one as a ``ZayaConfig`` (``zaya1 cost --model ZAYA1-74B-preview``
prices the 74B without its files).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ZayaConfig
from .errors import ConfigError

# published config.json files zaya1 carries (verbatim field sets; sources: test/data/configs/README.md)
PUBLISHED_DIR = Path(__file__).with_name("published_configs")


def published_config(name: str) -> dict:
    """The published config.json of checkpoint ``name`` (published_configs/<name>/config.json)."""
    return json.loads((PUBLISHED_DIR / name / "config.json").read_text(encoding="utf-8"))


_COMMON = dict(vocab_size=262272, bos_token_id=2, eos_token_id=106, pad_token_id=0, dtype="bfloat16",
               max_position_embeddings=131072)
# ZAYA1-8B in the HF layout (ZAYA1-reasoning-base and the -FP8/-MXFP4-Experts copies share it): 40 hybrid
# layers, all full attention
ZAYA1_8B = published_config("ZAYA1-8B")
# ZAYA1-8B-legacy: the original-layout json in scalars, no zaya_layers, num_hidden_layers counting half-layers,
# num_attention_heads the real query heads with head_dim
ZAYA1_8B_LEGACY = published_config("ZAYA1-8B-legacy")
# ZAYA1-base: the fork's per-half-layer lists (architecture doc 1.1)
ZAYA1_BASE = dict(_COMMON, model_type="zaya", hidden_size=2048, num_attention_heads=16, kv_channels=128,
                  num_key_value_heads=2, zaya_layers=["a", 16] * 40, cca_num_q_heads=[8, 0] * 40,
                  num_query_groups_list=[2, 0] * 40, ffn_hidden_size_list=[0, 4096] * 40,
                  zaya_mlp_expansion=[0, 256] * 40, norm_epsilon=1e-5, rope_theta=5000000, rope_scaling=False)
# ZAYA1-74B-preview: hidden 4096, 16 query / 2 KV heads of 128, 24 experts of width 4096, 60 hybrid layers of
# which every other one attends over a 4097-token window (rope theta 1e4; 1e7 on the full layers), tied
# embeddings (issue 17; the sources of the README); every other field as ZAYA1-8B's config.json
ZAYA1_74B = dict(ZAYA1_8B, hidden_size=4096, num_hidden_layers=60, num_attention_heads=16, num_experts=24,
                 moe_intermediate_size=4096, layer_types=["hybrid", "hybrid_sliding"] * 30, sliding_window=4097,
                 rope_parameters=dict(ZAYA1_8B["rope_parameters"],
                                      hybrid=dict(ZAYA1_8B["rope_parameters"]["hybrid"], rope_theta=10000000)))
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
