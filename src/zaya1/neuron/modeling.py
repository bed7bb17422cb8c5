"""NxDI model for ZAYA1: the core torch modules (zaya1.model) traced by NxDI, sharded by zaya1.sharding.

How it maps onto NxDI (file references are repo-relative to NxDI's src/neuronx_distributed_inference and NxD's
src/neuronx_distributed):

* Sharding. The core model is built at one rank's local shapes. Every parameter the plan splits
  (``parallel.PARTITION_DIMS``) is marked with NxD's tensor-parallel attributes and its owning module becomes
  a ``BaseParallelLinear`` subclass, so NxD's ``shard_children`` (trace/trace.py) cuts each rank's contiguous
  slice out of ``parallel.neuron_state_dict``: the per-rank tensors the CPU simulation is tested with.
* Collectives: NxD's ``reduce_from_tensor_model_parallel_region``; the lm_head is NxD's ColumnParallelLinear
  (``pad=True, keep_padded_output=True``, so NxDI's padded-logit mask hits the pad columns, not real ones).
* CCA state lives in the KV-cache manager (``ZayaCacheManager``): ``past_key_values`` is NxDI's K/V list
  followed by every layer's conv state and value state. NxDI aliases that list on device
  (models/model_wrapper.py ``DecoderModelInstance.get``), copies it after each CPU-mode step
  (models/model_base.py ``_copy_past_key_values``) and shares it between submodels, so the state goes
  wherever the K/V cache goes, with no alias index of our own.
* Masks: CCA builds its causal / sliding-window masks from positions; ``create_attn_mask`` hands the 2-D
  mask through, from which context encoding reads each sequence's length.
"""

from __future__ import annotations

import os
import re
import warnings

import neuronx_distributed_inference
import torch
from torch import nn

from neuronx_distributed.parallel_layers.layers import BaseParallelLinear, ColumnParallelLinear
from neuronx_distributed.parallel_layers.mappings import (gather_from_tensor_model_parallel_region,
                                                          reduce_from_tensor_model_parallel_region)
from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes
from neuronx_distributed_inference.models.config import InferenceConfig, MoENeuronConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseModel
from neuronx_distributed_inference.modules.generation.sampling import create_sampler
from neuronx_distributed_inference.modules.kvcache.kv_cache_manager import KVCacheManager
from neuronx_distributed_inference.modules.kvcache.utils import update_cache_const_indices

from ..config import HF_NAMED_FIELDS, ZayaConfig
from ..errors import ConfigError
from ..model import ZayaModel
from ..quantization import QuantizedWeight
from ..sharding import cca_state_shapes, check_tp, partition_dim
from .artifacts import graph_expert_dtype

# NxDI releases (major, minor) this backend is tested with: 0.9 is Neuron SDK 2.29's, and the vendored source
# the NxDI CPU stage runs (4bcdc54). zaya1 subclasses NxDI internals (KVCacheManager, the model wrapper's
# padding), so another release may differ; none is known to break.
NXDI_TESTED = ((0, 9),)


def check_nxdi_version(version: str | None = None) -> None:
    """Warn when NxDI (``neuronx_distributed_inference.__version__``, or ``version``) is not a tested release."""
    version = neuronx_distributed_inference.__version__ if version is None else version
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) not in NXDI_TESTED:
        tested = ", ".join(f"{major}.{minor}.x" for major, minor in NXDI_TESTED)
        warnings.warn(f"neuronx-distributed-inference {version} is not a release zaya1 is tested with ({tested}); "
                      f"run the integration suite (test/integration) before relying on it.", stacklevel=2)


# NeuronConfig field -> (value that is unsupported, why / what to pass)
_UNSUPPORTED = {
    "sequence_parallel_enabled": "the CCA causal convolutions need neighbouring tokens on one rank",
    "is_block_kv_layout": "CCA keeps per-sequence conv/value state; paged (block) KV is not implemented. With "
                          "vLLM pass --no-enable-prefix-caching",
    "is_prefix_caching": "a cached prefix would need its CCA state too. With vLLM pass --no-enable-prefix-caching",
    "is_chunked_prefill": "context encoding starts every sequence from empty CCA state. With vLLM leave "
                          "chunked prefill off (no chunked_prefill_config)",
    "enable_fused_speculation": "speculative decoding is not implemented for ZAYA1",
    "is_medusa": "speculative decoding is not implemented for ZAYA1",
    "flash_decoding_enabled": "ZAYA1's attention scores the whole cache on each rank",
    "k_cache_transposed": "the CCA attention reads K as [batch, heads, positions, dim]",
    "attn_block_tkg_nki_kernel_enabled": "ZAYA1 does not use NxDI's attention kernels",
    "quantized": "ZAYA1's modules are not NxD quantization layers",
    "kv_quant_config": "a quantized KV cache is not implemented for ZAYA1",
    "lora_config": "ZAYA1's projections are not LoRA layers",
    "tensor_capture_config": "tensor capture is not supported for ZAYA1",
    "async_mode": "zaya1's step API and vllm-neuron read each step's output on the host before the next step",
}


# the longest context-encoding bucket compiled when none are given (docs/trainium.md: neuronx-cc NCC_ITEN404 is
# reported for context buckets >= 1024)
MAX_DEFAULT_CONTEXT_BUCKET = 512


class ZayaNeuronConfig(MoENeuronConfig):
    """NxDI neuron config of ZAYA1 (a MoENeuronConfig); refuses the NxDI modes ZAYA1 does not implement,
    naming the field. With bucketing on and no ``context_encoding_buckets`` (vllm-neuron's default, which sets
    max_context_length = max_model_len), the longest prompt is capped at ``MAX_DEFAULT_CONTEXT_BUCKET``, so
    NxDI's automatic buckets stop there; given buckets are compiled as given."""

    def __init__(self, **kwargs):
        longest = kwargs.get("max_context_length") or kwargs.get("seq_len", 128)
        if kwargs.get("enable_bucketing") and not kwargs.get("context_encoding_buckets") and (
                longest > MAX_DEFAULT_CONTEXT_BUCKET):
            warnings.warn(f"max_context_length={longest} with automatic context buckets would compile buckets up to "
                          f"{longest}; ZAYA1 caps the longest prompt at {MAX_DEFAULT_CONTEXT_BUCKET} (docs/vllm.md). "
                          f"To compile longer ones, give context_encoding_buckets (vLLM: override_neuron_config).",
                          stacklevel=2)
            kwargs["max_context_length"] = MAX_DEFAULT_CONTEXT_BUCKET
        # absent continuous-batching rows get seq_id -1, so their KV and CCA state are not written (update_state)
        kwargs.setdefault("apply_seq_ids_mask", bool(kwargs.get("is_continuous_batching")))
        super().__init__(**kwargs)
        if self.is_continuous_batching and not self.apply_seq_ids_mask:
            raise ConfigError("apply_seq_ids_mask=False with continuous batching: a sequence absent from a "
                              "token-generation step would have its CCA state overwritten by NxDI's padding rows. "
                              "Leave apply_seq_ids_mask unset.")
        for field, why in _UNSUPPORTED.items():
            if getattr(self, field, None):
                raise ConfigError(f"{field}={getattr(self, field)!r} is not supported for ZAYA1 ({why}). "
                                  f"Leave {field} unset.")
        limits = {"speculation_length": 0, "attention_dp_degree": 1, "cp_degree": 1, "kv_cache_padding_size": 0,
                  "windowed_context_encoding_size": None}
        for field, ok in limits.items():
            if getattr(self, field, ok) != ok:
                raise ConfigError(f"{field}={getattr(self, field)!r} is not supported for ZAYA1; leave it at "
                                  f"{ok!r}.")
        if self.padding_side != "right":
            raise ConfigError(f"padding_side={self.padding_side!r}: ZAYA1 context encoding takes right-padded "
                              f"buckets. Use padding_side='right'.")
        if not self.is_continuous_batching and self.ctx_batch_size != self.batch_size:
            raise ConfigError(f"ctx_batch_size={self.ctx_batch_size} without continuous batching: NxDI's context "
                              f"encoding then fills cache rows from 0 for every chunk. Leave ctx_batch_size unset, "
                              f"or enable is_continuous_batching.")
        if not self.tkg_batch_size == self.kv_cache_batch_size == self.batch_size:
            raise ConfigError(f"tkg_batch_size={self.tkg_batch_size} and kv_cache_batch_size="
                              f"{self.kv_cache_batch_size} must equal batch_size={self.batch_size} for ZAYA1 "
                              f"(token generation runs every cache row); leave them unset.")


class ZayaInferenceConfig(InferenceConfig):
    """NxDI inference config built from either checkpoint layout through ``ZayaConfig``. The canonical config
    travels in ``self.zaya`` (a dict, saved in neuron_config.json). Built either with ``from_checkpoint`` or
    the way vllm-neuron builds it, ``ZayaInferenceConfig(nc, load_config=load_pretrained_config(path))``
    (needs ``zaya1.neuron.register()`` on transformers < 5.23, which does not know ``model_type: zaya``)."""

    @classmethod
    def from_checkpoint(cls, model_path: str, neuron_config: ZayaNeuronConfig, expert_dtype: str | None = None,
                        **overrides):
        """``expert_dtype="fp8"``: the graphs hold the experts as fp8 codes with row scales, quantized from a
        dense checkpoint when its weights are loaded (ZayaConfig.with_expert_dtype)."""
        zaya = ZayaConfig.from_pretrained(model_path, **overrides).with_expert_dtype(expert_dtype, str(model_path))

        def load_config(config):
            config.zaya = zaya.to_dict()
            config._name_or_path = str(model_path)

        return cls(neuron_config, load_config=load_config)

    def add_derived_config(self):
        self.num_cores_per_group = 1
        if not hasattr(self, "zaya"):  # loaded through NxDI's load_pretrained_config (vllm-neuron)
            self.zaya = ZayaConfig.from_pretrained(self._name_or_path).to_dict()
        zaya = self.zaya_config
        check_tp(zaya, self.neuron_config.tp_degree)
        graph_expert_dtype(zaya, getattr(self, "_name_or_path", None) or "config.json")
        check_nxdi_version()
        if int(os.environ.get("NEURON_COMBINE_KV_ALLOCATIONS", "0")) and zaya.num_hidden_layers % 2:
            raise ConfigError(f"NEURON_COMBINE_KV_ALLOCATIONS is set: NxD allocates past_key_values in pairs, which "
                              f"with {zaya.num_hidden_layers} layers pairs the last conv state with the first value "
                              f"state (different shapes). Unset NEURON_COMBINE_KV_ALLOCATIONS.")
        # the fields NxDI reads by their Hugging Face names (models/model_base.py, modules/kvcache); not
        # sliding_window: ZAYA1's own modules apply the window, NxDI's attention paths are not used
        for name in HF_NAMED_FIELDS:
            setattr(self, name, getattr(zaya, name))
        self.pad_token_id, self.bos_token_id = zaya.pad_token_id or 0, zaya.bos_token_id
        self.eos_token_id, self.tie_word_embeddings = zaya.eos_token_id, zaya.tie_word_embeddings
        # read by every NxDI forward (models/model_base.py _setup_func_config)
        self.output_attentions, self.output_hidden_states = False, False

    @property
    def zaya_config(self) -> ZayaConfig:
        return ZayaConfig.from_dict(self.zaya)

    def get_required_attributes(self):
        return ["zaya", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size"]

    @classmethod
    def get_neuron_config_cls(cls):
        return ZayaNeuronConfig


# ---------------------------------------------------------------------------------------------- sharding
class NxDComm:
    """The core model's collectives on NeuronCores."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        return reduce_from_tensor_model_parallel_region(x.to(torch.float32)).to(x.dtype)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        assert dim in (-1, x.dim() - 1), "the core model gathers along the last dim only"
        return x if self.world_size == 1 else gather_from_tensor_model_parallel_region(x)


_SHARDED_CLASSES: dict[type, type] = {}


def _sharded_class(cls: type) -> type:
    """``cls`` that NxD's sharding recognises (BaseParallelLinear takes no constructor arguments)."""
    if cls not in _SHARDED_CLASSES:
        _SHARDED_CLASSES[cls] = type(f"Sharded{cls.__name__}", (cls, BaseParallelLinear), {})
    return _SHARDED_CLASSES[cls]


def mark_sharded(model: nn.Module, tp: int) -> None:
    """Declare every parameter the plan splits as tensor-parallel along its partition dim. NxD shards, loads
    and traces parameters only (trace/trace.py ``shard_children``), so quantized experts' codes and scales,
    buffers of the core model, become frozen parameters first."""
    for module in model.modules():
        if isinstance(module, QuantizedWeight):
            for name in ("codes", "scale"):
                module.register_parameter(name, nn.Parameter(module._buffers.pop(name), requires_grad=False))
    for name, param in model.named_parameters():
        dim = partition_dim(name)
        if dim is None:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        if not isinstance(owner, BaseParallelLinear):
            owner.__class__ = _sharded_class(type(owner))
        set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1, num_partitions=tp)


# ---------------------------------------------------------------------------------------------- cache
class ZayaCacheManager(KVCacheManager):
    """NxDI's KV cache followed by each layer's CCA state in one parameter list:
    ``past_key_values = [K0, V0, ..., K_{L-1}, V_{L-1}, conv_0 .. conv_{L-1}, value_0 .. value_{L-1}]``,
    conv [rows, C, K-1], value [rows, Cv]. The state rows follow the K/V rows: context encoding writes the
    rows of ``seq_ids`` under continuous batching (one sequence, as NxDI's KV update asserts) and rows
    0..B-1 otherwise (NxDI's ``fill_prefix``); token generation reads every row and writes those of the
    sequences in the step (input row i is cache row i after NxDI's model wrapper sorts by seq_ids; the rows
    it pads in have seq_id -1 under ``apply_seq_ids_mask``, which ``ZayaNeuronConfig`` sets with continuous
    batching, and keep their state, as NxDI then keeps their K/V)."""

    def __init__(self, config: ZayaInferenceConfig, **kwargs):
        super().__init__(config, **kwargs)
        layers, rows, dtype = config.num_hidden_layers, self.kv_cache_batch_size, config.neuron_config.torch_dtype
        self.num_layers = layers
        conv_shape, value_shape = cca_state_shapes(config.zaya_config, config.neuron_config.tp_degree)

        def state(shape):
            return nn.Parameter(torch.zeros(rows, *shape, dtype=dtype), requires_grad=False)

        self.past_key_values.extend([state(conv_shape) for _ in range(layers)]
                                    + [state(value_shape) for _ in range(layers)])

    def get_cache(self, seq_len: int, **kwargs) -> list:
        """Per layer [K, V] up to ``seq_len`` (the CCA state is not K/V: see ``get_state``)."""
        return [list(self.get_kv_by_layer_id(idx=i, seq_len=seq_len, **kwargs)) for i in range(self.num_layers)]

    def get_state(self, batch: int) -> list:
        """Per layer (conv state [B, C, K-1], value state [B, Cv]) of token generation's rows."""
        convs = self.past_key_values[2 * self.num_layers:3 * self.num_layers]
        values = self.past_key_values[3 * self.num_layers:]
        return [(conv[:batch], value[:batch]) for conv, value in zip(convs, values)]

    def update_state(self, is_for_context_encoding: bool, seq_ids: torch.Tensor, new_states: list) -> list:
        """Full updated state buffers (conv_0.., value_0..) with the step's state written into its rows.

        Context encoding under continuous batching writes its one sequence's row the way NxDI writes that
        row's K/V (kvcache/utils.py ``update_cache_const_indices``: only the row index comes from seq_ids, every
        other index is a constant, so neuronx-cc computes one offset instead of a dynamic DMA, NCC-6227).
        Otherwise the step's rows are rows 0..B-1 of the buffers (``ZayaNeuronConfig`` holds the batch sizes
        equal), so no index is needed: ``torch.where`` keeps the rows whose seq_id is negative, the absent
        sequences NxDI's model wrapper pads a batch with under ``apply_seq_ids_mask``, and, reading each
        buffer, keeps the aliased input in the graph."""
        buffers = self.past_key_values[2 * self.num_layers:]
        news = [conv for conv, _ in new_states] + [value for _, value in new_states]
        if is_for_context_encoding and self.is_continuous_batching:
            rows = self.get_cache_update_index_for_seq_ids(seq_ids)
            return [write_row(buf, new, rows) for buf, new in zip(buffers, news)]
        return [torch.where((seq_ids >= 0).view(-1, *[1] * (buf.dim() - 1)), new.to(buf.dtype), buf)
                for buf, new in zip(buffers, news)]


def write_row(buf: torch.Tensor, new: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``buf`` [R, ...] with ``new`` [1, ...] in row ``rows`` [1], through NxDI's K/V row write on a
    K/V-shaped view [R, 1, n, last] of the state."""
    as_kv = buf.view(buf.shape[0], 1, -1, buf.shape[-1])
    return update_cache_const_indices(as_kv, new.to(buf.dtype).view(1, 1, -1, buf.shape[-1]), rows).view(buf.shape)


# ---------------------------------------------------------------------------------------------- model
class NeuronZayaModel(NeuronBaseModel):
    """The traced graph: ``self.model`` is the core ZayaModel of one rank."""

    def setup_attr_for_model(self, config: ZayaInferenceConfig):
        nc = config.neuron_config
        self.on_device_sampling = nc.on_device_sampling_config is not None
        self.tp_degree = nc.tp_degree
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.max_batch_size = nc.max_batch_size
        self.buckets = nc.buckets

    def init_model(self, config: ZayaInferenceConfig):
        nc, zaya = config.neuron_config, config.zaya_config
        self.model = ZayaModel(zaya, NxDComm(nc.tp_degree))
        mark_sharded(self.model, nc.tp_degree)
        self.lm_head = ColumnParallelLinear(config.hidden_size, config.vocab_size, bias=False, pad=True,
                                            keep_padded_output=True, gather_output=not self.on_device_sampling,
                                            dtype=nc.torch_dtype)

    def init_inference_optimization(self, config: ZayaInferenceConfig):
        if self.on_device_sampling:
            self.sampler = create_sampler(config.neuron_config, self.lm_head.tensor_parallel_group.size())
        zaya, shard = config.zaya_config, self.model.shard
        self.kv_mgr = ZayaCacheManager(config, num_kv_head=self.num_key_value_heads, global_rank=self.rank_util)
        if self.kv_mgr.k_shape[1] != shard.kv_heads:
            raise ConfigError(f"NxDI's KV cache holds {self.kv_mgr.k_shape[1]} KV heads per rank but the ZAYA1 plan "
                              f"{shard.kv_heads} at tp_degree={config.neuron_config.tp_degree}; use a tp_degree that "
                              f"divides or is a multiple of num_key_value_heads={zaya.num_key_value_heads}.")

    # NxDI reads these names; the modules live once, in the core model
    @property
    def embed_tokens(self):
        return self.model.embed_tokens

    @property
    def layers(self):
        return self.model.layers

    @property
    def norm(self):
        return self.model.norm

    def create_attn_mask(self, attention_mask, is_for_context_encoding, is_for_speculation, **kwargs):
        return attention_mask  # [B, S] 1 = token; CCA masks by positions (module docstring)

    def get_model_output(self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None,
                         is_for_context_encoding=False, **kwargs):
        if is_for_context_encoding:  # right-padded bucket of sequences that start now
            hidden, steps = self.model.prefill(input_ids, attention_mask.sum(dim=-1))
        else:
            past_kv = self.kv_mgr.get_cache(seq_len=self.n_positions, seq_ids=seq_ids)
            hidden, steps = self.model.decode(input_ids, position_ids[:, 0].to(torch.long), past_kv,
                                              self.kv_mgr.get_state(input_ids.shape[0]))
        self.sliced_hidden = True  # hidden is already each sequence's last real token (NxDI's own flag)
        kv = self.kv_mgr.update_cache(is_for_context_encoding=is_for_context_encoding, seq_ids=seq_ids,
                                      position_ids=position_ids, seq_len=self.n_positions,
                                      new_key_values=[[s.key, s.value] for s in steps])
        state = self.kv_mgr.update_state(is_for_context_encoding, seq_ids, [(s.conv, s.value_prev) for s in steps])
        return hidden[:, None], kv + state
