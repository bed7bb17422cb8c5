"""ZAYA1 in the native vLLM Neuron plugin's model contract (vllm-neuron >= 0.21: plain torch modules that the
runner compiles with ``torch.compile``), over zaya1's own modules.

The contract as read (sources in docs/vllm-neuron.md; main file vllm-project/vllm-neuron
vllm_neuron/model/qwen3_5/model.py@cb27dd0): the runner builds the model on the meta device with
``from_configs``, calls ``load_weights(path, device, cache_dir)``, asks ``get_kv_spec()``, binds the page pools
with ``bind_kv_cache`` and calls ``forward`` over flattened tokens with per-layer ``attn_metadata``. A step
is a prefill of one request (a segment of its prompt, padded to a token bucket) or a decode batch of one
token per row (padded to a batch bucket), told apart by ``max_query_len <= decode_token_threshold``.

Everything the model computes is ``ZayaModel.forward`` (zaya1.model): this module only reads the cached K/V
and CCA state from the pages before it and writes the new ones after it (zaya1.vllm_neuron.paged).
The CCA state (the last packed q/k projection columns and the last value projection of each attention
layer) is declared as a recurrent layer; a sequence keeps one state page per ``state_block`` tokens of its
state group, so with the state block equal to the KV block a cached prefix resumes exactly from the state
at its last block boundary: prefix caching keeps working (paged.state_pages).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_into, resolve_dtype
from ..config import ZayaConfig
from ..errors import ConfigError, InputError
from ..model import ZayaForCausalLM
from ..sharding import LocalComm, cca_state_shapes, embedding_rank, rank_shards
from . import paged
from .sampler import sample
from .spec import KVSpec, LayerSpec, RecurrentLayerSpec


def attention_name(layer: int) -> str:
    return f"layers.{layer}.self_attn"


def state_name(layer: int) -> str:
    return f"layers.{layer}.cca_state"


class VllmTPComm:
    """zaya1's collective interface over vLLM's tensor-parallel group (``vllm.distributed.get_tp_group()``,
    whose all_reduce / all_gather the plugin's models call)."""

    def __init__(self, group):
        self.group, self.rank, self.world_size = group, group.rank_in_group, group.world_size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(x)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return self.group.all_gather(x, dim)


def default_comm():
    """vLLM's TP group inside a vLLM worker, else a single rank."""
    try:
        from vllm.distributed import get_tp_group  # optional: only inside vLLM

        return VllmTPComm(get_tp_group())
    except (ImportError, AssertionError):  # vLLM absent, or its groups not initialised (tests, tools)
        return LocalComm()


class ZayaNativeForCausalLM(nn.Module):
    """One rank's ZAYA1 for the native plugin. ``comm``: the rank's collectives (vLLM's TP group by default;
    zaya1.simulated_tp's thread collectives in the CPU emulation)."""

    kv_cache_page_major = True  # one page-major pool per layer, two private pages appended by the runner
    is_hybrid = True  # vLLM sets up state pages only for hybrid models

    def __init__(self, config: ZayaConfig, dtype: torch.dtype = torch.bfloat16, comm=None):
        super().__init__()
        self.config, self.comm = config, comm or LocalComm()
        self.lm = ZayaForCausalLM(config, self.comm).to(dtype)
        (channels, state_len), (value_channels,) = cca_state_shapes(config, self.comm.world_size)
        self.state_layout = paged.StateLayout(channels, state_len, value_channels)
        self.kv_pages: list[torch.Tensor] = []
        self.state_rows: list[torch.Tensor] = []

    # ------------------------------------------------------------------ construction (the runner's calls)
    @classmethod
    def from_configs(cls, hf_config, text_neuron_config=None, vision_neuron_config=None, comm=None):
        """The runner's constructor, called positionally or with keywords, under ``torch.device("meta")``.
        ``hf_config``: the checkpoint's config (transformers' object or a dict; either layout)."""
        raw = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        config = ZayaConfig.from_dict(raw)
        dtype = getattr(text_neuron_config, "torch_dtype", None) or "auto"
        return cls(config, resolve_dtype(dtype, config), comm or default_comm())

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config):
        """vLLM's hook for hybrid models (state pages are set up only with it): the per-rank state shapes."""
        config = ZayaConfig.from_dict(vllm_config.model_config.hf_config.to_dict())
        return cca_state_shapes(config, vllm_config.parallel_config.tensor_parallel_size)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config):
        dtype = vllm_config.model_config.dtype
        return dtype, dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def load_weights(self, checkpoint_path: str | Path, device=None, cache_dir=None) -> None:
        """This rank's shard of the checkpoint (either layout; the sharding plan of zaya1.sharding, KV heads
        replicated beyond 2 ranks), read one canonical tensor at a time: a rank's process holds its shard plus
        one whole tensor, not the whole checkpoint."""
        tp, rank = self.comm.world_size, self.comm.rank
        shard = embedding_rank(tp, rank)

        def keep(name: str, tensor: torch.Tensor) -> None:
            shard.update(rank_shards(name, tensor, self.config, tp, rank))

        full = ZayaForCausalLM.empty(self.config, dtype=self.dtype, device="meta")
        load_into(full, self.config, checkpoint_path, complete=keep)  # names, shapes, dtypes checked
        self.lm.load_state_dict(shard, strict=True, assign=True)
        self.lm.eval().requires_grad_(False)
        if device is not None:
            self.to(device)

    def get_kv_spec(self) -> KVSpec:
        """Per rank: paged K/V of every attention layer and the CCA state of every layer, conv [C, K-1] and
        value [Cv], as a recurrent layer. The plugin's own classes when installed."""
        cfg, shard = self.config, self.lm.model.shard
        # Sliding-window layers are declared as full attention: the model applies the window itself (zaya1.cca),
        # and a declared window lets the runner trim their block tables by an offset (swa_kv_pos_offset) whose
        # semantics could not be verified here. Costs their pages outside the window.
        spec = KVSpec(
            [LayerSpec(attention_name(i), shard.kv_heads, cfg.head_dim, self.dtype) for i in range(cfg.num_hidden_layers)],
            [RecurrentLayerSpec(state_name(i), cca_state_shapes(cfg, self.comm.world_size), (self.dtype, self.dtype))
             for i in range(cfg.num_hidden_layers)])
        try:
            from vllm_neuron.model import kv_cache  # the native plugin, when installed
        except ImportError:
            return spec
        return kv_cache.KVSpec([kv_cache.LayerSpec(**vars(s)) for s in spec.layers],
                               [kv_cache.RecurrentLayerSpec(**vars(s)) for s in spec.recurrent_layers])

    def bind_kv_cache(self, kv_caches: dict[str, list[torch.Tensor]]) -> None:
        """Attention layers: one tensor [pages, 2, kv_heads, block_size, head_dim]; state layers: one tensor
        [pages, elems] in the model dtype (pages include the runner's zero page and sink)."""
        def one(name: str) -> torch.Tensor:
            tensors = kv_caches.get(name)
            if tensors is None or len(tensors) != 1:
                raise ConfigError(f"bind_kv_cache: expected one page-major tensor for {name!r}, got "
                                  f"{None if tensors is None else len(tensors)}; the runner must honour "
                                  f"kv_cache_page_major = True.")
            return tensors[0]

        layers = range(self.config.num_hidden_layers)
        self.kv_pages = [one(attention_name(i)) for i in layers]
        self.state_rows = [one(state_name(i)) for i in layers]
        if self.state_rows[0].shape[1] < self.state_layout.elems:
            raise ConfigError(f"bind_kv_cache: a state page holds {self.state_rows[0].shape[1]} elements, the "
                              f"CCA state needs {self.state_layout.elems}; use a larger block size "
                              f"(zaya1.vllm_neuron.spec.min_block_size).")

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def forward(self, input_ids, positions, rotary_position_ids=None, attn_metadata=None, sampling_positions=None,
                sampling_params=None, spec_decode_metadata=None, logit_mask=None, rank=None, **unused):
        """input_ids [T] int32, positions [T] int64 (flattened: one prefill request, or one token per decode
        row), attn_metadata {layer name: metadata}, sampling_positions [R] (token index per request).
        Returns logits [R, V] fp32, or (tokens [R] int32, logits) with ``sampling_params`` [R, 3].
        ``rank`` is not needed: the vocab shard's offset is a loaded per-rank tensor; other keywords of the
        runner (multimodal inputs) do not apply to ZAYA1."""
        if spec_decode_metadata is not None:
            raise InputError("speculative decoding is not supported by zaya1's native ZAYA1 model; serve "
                             "without --speculative-config.")
        return self.step(self.kv_pages, self.state_rows, input_ids, positions, attn_metadata, sampling_positions,
                         sampling_params, logit_mask)

    def step(self, kv_pages, state_rows, input_ids, positions, attn_metadata, sampling_positions,
             sampling_params=None, logit_mask=None):
        """``forward`` with the page pools as arguments (what a functional export takes as inputs)."""
        cfg = self.config
        first = attn_metadata[attention_name(0)]
        decode = first["max_query_len"] <= first["decode_token_threshold"]
        live = first["slot_mapping"] > 0  # [T] real tokens (padding: -1 on vLLM 0.21, the null slot 0 on 0.24)
        if decode:  # R rows of one token
            ids, pos, mask = input_ids[:, None], positions[:, None], live[:, None]
        else:  # one request, T tokens
            ids, pos, mask = input_ids[None], positions[None], live[None]
        start, real = pos[:, 0], mask.sum(-1)  # tokens computed before the step, new real tokens [B]
        row_live = real > 0
        state_block = attn_metadata[state_name(0)]["block_size"]  # one state group: one block size
        count = ids.shape[1] // state_block + 2  # state blocks a step of this width can touch
        cuts = paged.block_cuts(start, real, state_block, count)  # [B, count]
        past, states, writes = [], [], []
        for i in range(cfg.num_hidden_layers):
            meta = attn_metadata[state_name(i)]
            read, write = paged.state_pages(meta["block_table_tensor"], state_block, start, real, count, row_live,
                                            state_rows[i].shape[0])
            states.append(self.state_layout.read(state_rows[i], read))
            writes.append(write)
            # prefill reads the cache too: a segment or a prefix-cache hit starts after cached tokens
            past.append(paged.read_kv(kv_pages[i], attn_metadata[attention_name(i)]["block_table_tensor"], start))
        dispatch = "gather" if decode else self.lm._dispatch()
        hidden, steps = self.lm.model(ids, pos, mask, cuts, states, past, dispatch)
        for i, (layer, write) in enumerate(zip(steps, writes)):
            tokens = ids.numel()
            key = layer.key.permute(0, 2, 1, 3).reshape(tokens, -1, cfg.head_dim)  # [T, nkv, d] token order
            value = layer.value.permute(0, 2, 1, 3).reshape(tokens, -1, cfg.head_dim)
            paged.write_kv(kv_pages[i], attn_metadata[attention_name(i)]["slot_mapping"], key, value)
            self.state_layout.write(state_rows[i], write.reshape(-1), layer.conv.flatten(0, 1),
                                    layer.value_prev.flatten(0, 1))
        last = hidden.reshape(-1, hidden.shape[-1]).index_select(0, sampling_positions.to(torch.long))
        logits = self.lm.logits(last)
        if logit_mask is not None:
            logits = logits.masked_fill(~logit_mask[:, :logits.shape[-1]], float("-inf"))
        if sampling_params is None:
            return logits
        return sample(logits, sampling_params), logits

