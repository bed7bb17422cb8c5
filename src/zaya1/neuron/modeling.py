"""NxDI model for ZAYA1: the core torch modules (zaya1.model) traced by NxDI, sharded by zaya1.parallel.

How it maps onto NxDI (file references are repo-relative, see README "Running on Trainium2"):

* Sharding. The core model is built at one rank's local shapes. Every parameter the plan splits
  (``parallel.PARTITION_DIMS``) is marked with NxD's tensor-parallel attributes, and its owning module
  becomes a ``BaseParallelLinear`` subclass, so NxD's ``shard_children`` (neuronx_distributed
  trace/trace.py) cuts each rank's contiguous slice out of ``parallel.neuron_state_dict`` -- exactly the
  per-rank tensors the CPU simulation (``parallel.SimulatedTP``) is tested with. Rank-dependent math uses
  rank tensors (``embed_tokens.rank``, SPMDRank convention), never Python ranks.
* Collectives. The two all-reduces per layer and the embedding's reduce are NxD's
  ``reduce_from_tensor_model_parallel_region``; the lm_head is NxD's ColumnParallelLinear, so NxDI's
  on-device sampling and padded-vocab masking apply unchanged.
* CCA state. Per layer a conv state [max_batch, C, K-1] and a value state [max_batch, Cv] are aliased
  parameters (state buffers) written after the KV cache outputs (``ZayaDecoderModelInstance``): context
  encoding computes from zero state and writes the rows of ``seq_ids`` with the state after each
  sequence's last real token (from the 2-D attention mask); token generation reads and writes those rows.
* MoE. ZAYA's router (MLP + EDA + skip class, model dtype softmax, fp32 choice) and the core's static
  dispatch: ``gather`` (token generation reads only the selected experts) and ``blockwise`` (context
  encoding, about T + E * block rows instead of E * T). NxD's ExpertMLPsV2 would need its fused TKG kernel
  bypassed for a custom router and renormalises top-k affinities; the core dispatch is exact and proven
  against the CPU reference.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from neuronx_distributed.parallel_layers.layers import BaseParallelLinear, ColumnParallelLinear
from neuronx_distributed.parallel_layers.mappings import (gather_from_tensor_model_parallel_region,
                                                          reduce_from_tensor_model_parallel_region)
from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes
from neuronx_distributed_inference.models.config import InferenceConfig, MoENeuronConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM, NeuronBaseModel
from neuronx_distributed_inference.models.model_wrapper import DecoderModelInstance, ModelWrapper

from ..artifacts import ArtifactManifest, check_manifest, check_request, load_manifest
from ..checkpoint import resolve_dtype
from ..config import ZayaConfig
from ..errors import ConfigError, InputError
from ..generation import right_pad, split_prompts
from ..model import ZayaForCausalLM, ZayaModel
from ..sharding import check_tp, neuron_state_dict, partition_dim


# ---------------------------------------------------------------------------------------------- configs
class ZayaNeuronConfig(MoENeuronConfig):
    """NxDI neuron config of ZAYA1 (a MoENeuronConfig). Sequence parallelism is refused: it splits the
    sequence across ranks and the causal convolutions need neighbouring tokens."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.sequence_parallel_enabled:
            raise ConfigError("sequence_parallel_enabled=True is not supported for ZAYA1: the CCA causal "
                              "convolutions need neighbouring tokens. Leave it off.")
        if self.padding_side != "right":
            raise ConfigError(f"padding_side={self.padding_side!r}: ZAYA1 context encoding takes right-padded "
                              f"buckets. Use padding_side='right'.")


class ZayaInferenceConfig(InferenceConfig):
    """NxDI inference config built from either checkpoint layout through ``ZayaConfig``. The canonical
    config travels in ``self.zaya`` (a dict, saved in neuron_config.json)."""

    @classmethod
    def from_checkpoint(cls, model_path: str, neuron_config: ZayaNeuronConfig, **overrides):
        zaya = ZayaConfig.from_pretrained(model_path, **overrides)

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
        # the fields NxDI reads by their Hugging Face names
        self.hidden_size, self.vocab_size = zaya.hidden_size, zaya.vocab_size
        self.num_hidden_layers, self.head_dim = zaya.num_hidden_layers, zaya.head_dim
        self.num_attention_heads, self.num_key_value_heads = zaya.num_attention_heads, zaya.num_key_value_heads
        self.max_position_embeddings, self.rms_norm_eps = zaya.max_position_embeddings, zaya.rms_norm_eps
        self.pad_token_id, self.bos_token_id = zaya.pad_token_id or 0, zaya.bos_token_id
        self.eos_token_id = zaya.eos_token_id
        self.tie_word_embeddings = zaya.tie_word_embeddings

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
    """Declare every parameter the plan splits as tensor-parallel along its partition dim."""
    for name, param in model.named_parameters():
        dim = partition_dim(name)
        if dim is None:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        if not isinstance(owner, BaseParallelLinear):
            owner.__class__ = _sharded_class(type(owner))
        set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1, num_partitions=tp)


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
                                            gather_output=not self.on_device_sampling, dtype=nc.torch_dtype)
        shard, layers = self.model.shard, zaya.num_hidden_layers
        channels = (shard.q_heads + shard.kv_heads) * zaya.head_dim

        def state(*shape):
            return nn.Parameter(torch.zeros(nc.max_batch_size, *shape, dtype=nc.torch_dtype), requires_grad=False)

        # aliased state buffers (names must not contain "past_key_values")
        self.cca_conv_state = nn.ParameterList(state(channels, zaya.conv_state_len) for _ in range(layers))
        self.cca_value_state = nn.ParameterList(state(shard.kv_heads * zaya.head_dim) for _ in range(layers))
        self._attention_mask_2d = None
        self._updated_states: list[torch.Tensor] = []

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

    @property
    def state_params(self) -> list[nn.Parameter]:
        """Aliased state, in the order the forward returns it (after the KV cache)."""
        return [*self.cca_conv_state, *self.cca_value_state]

    def forward(self, input_ids, attention_mask, *args, **kwargs):
        self._attention_mask_2d = attention_mask  # the base forward replaces it by the 4-D causal mask
        return super().forward(input_ids, attention_mask, *args, **kwargs) + self._updated_states

    def get_model_output(self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None,
                         is_for_context_encoding=False, update_cache=True, **kwargs):
        layers = range(len(self.cca_conv_state))
        if is_for_context_encoding:  # right-padded bucket, fresh sequences
            lengths = self._attention_mask_2d[:, :input_ids.shape[1]].sum(dim=-1)
            hidden, steps = self.model.prefill(input_ids, lengths, dispatch="blockwise")
        else:
            past_kv = self.kv_mgr.get_cache(seq_ids=seq_ids, seq_len=self.n_positions,
                                            is_for_context_encoding=False, **kwargs)
            states = [(self.cca_conv_state[i].index_select(0, seq_ids), self.cca_value_state[i].index_select(0, seq_ids))
                      for i in layers]
            hidden, steps = self.model.decode(input_ids, position_ids[:, 0].to(torch.long), past_kv, states)
        # the last token is already picked (NxDI's argmax(position_ids) is wrong for 1-token prompts)
        self.sliced_hidden = True
        new_kv = self.kv_mgr.update_cache(is_for_context_encoding=is_for_context_encoding, seq_ids=seq_ids,
                                          position_ids=position_ids, new_key_values=[[s.key, s.value] for s in steps],
                                          seq_len=self.n_positions, **kwargs)
        rows = seq_ids.to(torch.long)
        self._updated_states = (
            [self.cca_conv_state[i].index_copy(0, rows, steps[i].conv.to(self.cca_conv_state[i].dtype)) for i in layers]
            + [self.cca_value_state[i].index_copy(0, rows, steps[i].value_prev.to(self.cca_value_state[i].dtype))
               for i in layers])
        return hidden[:, None], new_kv


class ZayaDecoderModelInstance(DecoderModelInstance):
    """Aliases the CCA state buffers to the outputs that follow the KV cache."""

    def get(self, bucket_rank, **kwargs):
        module, aliases = super().get(bucket_rank, **kwargs)
        start = (2 if self.neuron_config.output_logits else 1) + len(module.kv_mgr.past_key_values)
        for i, param in enumerate(module.state_params):
            aliases[param] = start + i
        return module, aliases


class ZayaModelWrapper(ModelWrapper):
    def get_model_instance(self):
        return ZayaDecoderModelInstance(model_cls=self.model_cls, config=self.config, **self.model_init_kwargs)


# ---------------------------------------------------------------------------------------------- application
class NeuronZayaForCausalLM(NeuronBaseForCausalLM):
    """ZAYA1 on Trainium2. ``compile(dir)`` traces it ahead of time (scripts/compile.py adds the manifest and
    atomic writes); ``from_compiled(dir)`` loads compiled artifacts; ``generate`` runs NxDI's
    HuggingFaceGenerationAdapter."""

    _model_cls = NeuronZayaModel

    @classmethod
    def get_config_cls(cls):
        return ZayaInferenceConfig

    def get_model_wrapper_cls(self):
        return ZayaModelWrapper

    @staticmethod
    def load_hf_model(model_path, **kwargs):
        """The CPU reference (used by NxDI's accuracy utilities)."""
        return ZayaForCausalLM.from_pretrained(model_path, **kwargs)

    @property
    def model_path_or_name(self) -> str:
        return getattr(self.config, "_name_or_path", self.model_path)

    def checkpoint_loader_fn(self, mmap: bool = False):
        """Either checkpoint layout -> canonical weights (zaya1.checkpoint) -> Neuron state dict
        (zaya1.parallel, the plan the CPU simulation proves) + the lm_head and NxDI's rank tensor."""
        zaya, nc = self.config.zaya_config, self.neuron_config
        canonical = ZayaForCausalLM.from_pretrained(self.model_path_or_name,
                                                    dtype=resolve_dtype(nc.torch_dtype)).state_dict()
        lm_head = canonical["model.embed_tokens.weight" if zaya.tie_word_embeddings else "lm_head.weight"]
        canonical.pop("lm_head.weight", None)
        state = neuron_state_dict(canonical, zaya, nc.tp_degree)
        state["lm_head.weight"] = lm_head
        state["rank_util.rank"] = torch.arange(nc.tp_degree, dtype=torch.int32)
        return state

    @classmethod
    def from_compiled(cls, compiled_path: str, model_path: str | None = None) -> "NeuronZayaForCausalLM":
        config = ZayaInferenceConfig.load(compiled_path)
        model = cls(model_path or config._name_or_path, config)
        model.load(compiled_path)
        return model

    def expected_manifest(self) -> ArtifactManifest:
        """The manifest compiled artifacts must carry to be loaded with this config and checkpoint."""
        nc = self.neuron_config
        return ArtifactManifest.for_checkpoint(
            self.model_path_or_name, tp_degree=nc.tp_degree, batch_size=nc.batch_size, seq_len=nc.seq_len,
            max_context_length=nc.max_context_length, buckets=nc.context_encoding_buckets, dtype=nc.torch_dtype,
            on_device_sampling=nc.on_device_sampling_config is not None,
            token_generation_buckets=nc.token_generation_buckets)

    def load(self, compiled_model_path, *args, **kwargs):
        """Load compiled artifacts after checking they were made for this config, checkpoint and SDK."""
        manifest = load_manifest(compiled_model_path)
        check_manifest(manifest, self.expected_manifest(), artifacts_dir=compiled_model_path)
        self.manifest = manifest
        return super().load(os.path.join(str(compiled_model_path), ""), *args, **kwargs)

    # The step-function interface of zaya1.generation (host-side sampling; needs logits on the host, i.e.
    # compiled without on-device sampling or with output_logits). The state lives on the device.
    def new_state(self, max_batch: int, max_seq: int) -> "_DeviceState":
        if max_batch > self.manifest.batch_size:
            raise InputError(f"a batch of {max_batch} sequences exceeds the compiled batch_size="
                             f"{self.manifest.batch_size}; split it or recompile with scripts/compile.py --batch-size.")
        self.reset()
        return _DeviceState(self.neuron_config.seq_len)

    def prefill(self, input_ids, lengths, seq_ids, state=None) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq).expand(input_ids.shape[0], seq)
        mask = (positions < lengths[:, None]).to(torch.int32)
        return self._host_logits(self(input_ids=input_ids, attention_mask=mask, position_ids=positions, seq_ids=seq_ids))

    def decode(self, input_ids, positions, seq_ids, state=None, kv_len=None) -> torch.Tensor:
        mask = (torch.arange(int(positions.max()) + 1)[None] <= positions[:, None]).to(torch.int32)
        return self._host_logits(self(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, None],
                                      seq_ids=seq_ids))

    def _host_logits(self, output) -> torch.Tensor:
        if output.logits is None:
            raise ConfigError("this model was compiled with on-device sampling and returns no logits; recompile "
                              "without --on-device-sampling (or with output_logits) to compare logits.")
        return output.logits[:, -1, :self.config.vocab_size].to(torch.float32)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, do_sample=False, temperature=1.0,
                 top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=None, seed=None, streamer=None):
        """transformers-style generate through NxDI's HuggingFaceGenerationAdapter (right-padded prompts,
        on-device sampling when the model was compiled with it)."""
        from neuronx_distributed_inference.utils.hf_adapter import HuggingFaceGenerationAdapter
        from transformers import GenerationConfig

        zaya = self.config.zaya_config
        prompts = split_prompts(input_ids, attention_mask)
        check_request(self.manifest, len(prompts), [len(p) for p in prompts], max_new_tokens)
        pad = pad_token_id if pad_token_id is not None else (zaya.pad_token_id or 0)
        ids, lengths = right_pad(prompts, pad)
        width = ids.shape[1]
        mask = (torch.arange(width)[None] < lengths[:, None]).to(torch.long)
        if seed is not None:
            torch.manual_seed(seed)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_k=top_k or None, top_p=top_p, pad_token_id=pad,
                                  eos_token_id=zaya.eos_token_id if eos_token_id is None else eos_token_id)
        out = HuggingFaceGenerationAdapter(self).generate(
            ids, attention_mask=mask, generation_config=config,
            streamer=_CallbackStreamer(streamer) if streamer else None)
        return torch.cat([input_ids, out[:, width:]], dim=1)


class _DeviceState:
    """Host handle of the state that lives on the NeuronCores (KV cache and aliased CCA buffers)."""

    def __init__(self, max_seq: int):
        self.max_seq = max_seq


class _CallbackStreamer:
    """transformers' streamer protocol over a ``callback(tokens [B])``; the first put is the prompt."""

    def __init__(self, callback):
        self.callback, self.prompt_seen = callback, False

    def put(self, value):
        if self.prompt_seen:
            self.callback(value.reshape(-1))
        self.prompt_seen = True

    def end(self):
        pass
