"""ZAYA1's ``model_type: zaya`` for transformers' ``AutoConfig`` where transformers does not know it (< 5.23;
NxDI pins 4.57).

vLLM (``ModelConfig``) and NxDI (``utils/hf_adapter.py`` ``load_pretrained_config``) both read a checkpoint's
config through ``AutoConfig.from_pretrained`` (NxDI without ``trust_remote_code``). ``ZayaHFConfig`` keeps
every field of config.json as written and sets the fields those readers size the model by to their canonical
values (``zaya1.config.ZayaConfig``, which parses both layouts): the original layout's ``num_attention_heads``
counts twice the query heads and its ``num_hidden_layers`` counts half-layers.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..config import HF_NAMED_FIELDS, ZayaConfig

CANONICAL_FIELDS = HF_NAMED_FIELDS + ("sliding_window",)  # vLLM reads sliding_window too


class ZayaHFConfig(PretrainedConfig):
    """config.json of either ZAYA1 layout, with ``CANONICAL_FIELDS`` normalised. ``ZayaHFConfig()`` (no fields,
    as transformers builds it for its defaults) has ZayaConfig's defaults."""

    model_type = "zaya"

    def __init__(self, **kwargs):
        zaya = ZayaConfig.from_dict(kwargs) if kwargs else ZayaConfig()
        super().__init__(**kwargs)
        for name in CANONICAL_FIELDS:
            setattr(self, name, getattr(zaya, name))
        rope = getattr(self, "rope_parameters", None)
        if isinstance(rope, dict) and rope and "rope_type" not in rope:
            # the HF layout's per-layer-type dicts ("hybrid", "hybrid_sliding", each rope_type "default", which
            # ZayaConfig checked): vLLM 0.16 reads a dict whose keys are not transformers 4.57's layer types as
            # one flat dict and requires its rope_type (transformers_utils/config.py patch_rope_parameters)
            self.rope_parameters = {**rope, "rope_type": "default"}


def register_auto_config() -> bool:
    """Let ``AutoConfig`` read ``model_type: zaya`` as ``ZayaHFConfig`` unless this transformers ships its own
    (>= 5.23). Idempotent. True when AutoConfig now resolves "zaya" to ``ZayaHFConfig``."""
    if ZayaHFConfig.model_type in CONFIG_MAPPING:
        return CONFIG_MAPPING[ZayaHFConfig.model_type] is ZayaHFConfig
    AutoConfig.register(ZayaHFConfig.model_type, ZayaHFConfig)
    return True
