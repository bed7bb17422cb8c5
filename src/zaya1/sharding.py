"""Tensor-parallel plan: which rank holds which slice of every weight. Pure functions on configs and state
dicts (no model code), used by the model (per-rank shapes), the Neuron backend and the CPU simulation.

One plan serves both backends. ``rank_state_dicts`` cuts a canonical (unsharded) state dict into per-rank
state dicts; ``neuron_state_dict`` concatenates those along each tensor's partition dim, so that NxD's
contiguous per-rank slicing returns exactly the same per-rank tensors. ``zaya1.simulated_tp`` runs the
per-rank models in one process, which proves the plan on CPU with the same model code the Neuron backend
traces.

Attention (architecture doc section 6): rank r owns query heads [r * nq/tp, (r+1) * nq/tp).
* tp <= nkv: rank r also owns KV heads [r * nkv/tp, ...): whole KV groups, no communication, no
  replicated projection. Conv channels are the rank's q heads then its KV heads; groups are heads.
* tp > nkv (tp a multiple of nkv): each KV head is replicated on the tp/nkv ranks that share it (as NxDI's
  GQA does), the query heads are split. The key's group-mean residual needs the whole group's Q0 mean; it
  is a separate [d, H] projection with the group's mean query weight (exact in real arithmetic, no comm).
* value rows: [Wcur; Wdel] rows of the rank's KV heads; ``value_delayed`` marks which come from the
  previous token (KV head 0 = current, head 1 = previous for nkv = 2), so no rank-dependent branch exists.
* o_proj is row-parallel: one all-reduce per attention block.
MoE: each expert's intermediate dimension is split (gate rows and up rows separately), down_proj
row-parallel, one all-reduce per MoE block; the router is replicated. Embedding and lm_head (tied) are
split by vocabulary; the vocab is padded to a multiple of tp with zero rows whose logits are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MX_GROUP, MXFP4, ZayaConfig
from .errors import ConfigError


@dataclass(frozen=True)
class AttentionShard:
    """Head counts of one rank's attention block."""

    q_heads: int
    kv_heads: int
    whole_groups: bool  # the rank holds every query head of its KV heads

    @classmethod
    def for_tp(cls, config: ZayaConfig, tp: int) -> "AttentionShard":
        check_tp(config, tp)
        nq, nkv = config.num_attention_heads, config.num_key_value_heads
        if tp <= nkv:
            return cls(nq // tp, nkv // tp, True)
        return cls(nq // tp, 1, nq // tp == nq // nkv)


def cca_state_shapes(config: ZayaConfig, tp: int) -> tuple[tuple[int, int], tuple[int]]:
    """One layer's CCA state on a rank: conv [(q heads + KV heads) x head_dim, conv_state_len] (the packed
    q/k columns), value [KV heads x head_dim] (KV heads replicated beyond nkv ranks)."""
    shard = AttentionShard.for_tp(config, tp)
    return (((shard.q_heads + shard.kv_heads) * config.head_dim, config.conv_state_len),
            (shard.kv_heads * config.head_dim,))


def check_tp(config: ZayaConfig, tp: int) -> None:
    nq, nkv = config.num_attention_heads, config.num_key_value_heads
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tp_degree={tp!r} must be a positive integer.")
    if nq % tp:
        raise ConfigError(f"tp_degree={tp} does not divide the {nq} query heads; use a divisor of {nq}.")
    if nkv % tp and tp % nkv:
        raise ConfigError(f"tp_degree={tp} and {nkv} KV heads: one must divide the other.")
    if config.moe_intermediate_size % tp:
        raise ConfigError(f"tp_degree={tp} does not divide moe_intermediate_size={config.moe_intermediate_size}.")
    if config.expert_quantization == MXFP4 and (config.moe_intermediate_size // tp) % MX_GROUP:
        raise ConfigError(f"tp_degree={tp}: mxfp4 experts shard down_proj by whole {MX_GROUP}-column scale groups, "
                          f"but moe_intermediate_size={config.moe_intermediate_size} / {tp} is not a multiple of "
                          f"{MX_GROUP}; use a smaller tp_degree.")


def padded_vocab(config: ZayaConfig, tp: int) -> int:
    return -(-config.vocab_size // tp) * tp


class LocalComm:
    """Collectives of a single rank (identities): the model's default; zaya1.simulated_tp.ThreadComm and the
    Neuron backend's NxD collectives have the same interface."""

    rank, world_size = 0, 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x


def _head_rows(tensor: torch.Tensor, heads: list[int], size: int, dim: int = 0) -> torch.Tensor:
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])
    return tensor.index_select(dim, index.to(tensor.device))


def rank_heads(config: ZayaConfig, tp: int, rank: int) -> tuple[list[int], list[int]]:
    """(query heads, KV heads) held by ``rank``; KV heads repeat over ranks when tp > nkv."""
    nq, nkv = config.num_attention_heads, config.num_key_value_heads
    q = list(range(rank * nq // tp, (rank + 1) * nq // tp))
    kv = list(range(rank * nkv // tp, (rank + 1) * nkv // tp)) if tp <= nkv else [rank * nkv // tp]
    return q, kv


# canonical key suffix -> partition dim of the Neuron (rank-concatenated) tensor; absent = replicated
PARTITION_DIMS = {
    "embed_tokens.weight": 0, "embed_tokens.rank": 0, "lm_head.weight": 0,
    "q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0, "value_delayed": 0, "q_group_mean_proj.weight": 0,
    "conv_qk_depthwise.weight": 0, "conv_qk_depthwise.bias": 0, "conv_qk_grouped.weight": 0,
    "conv_qk_grouped.bias": 0, "self_attn.temp": 0, "o_proj.weight": 1,
    "experts.gate_up_proj": 1, "experts.down_proj": 2,
    # quantized experts (quantization.py): codes and scales split like the weight they encode; an fp8
    # down_proj's row scales [E, H, 1] are the same on every rank (concatenated, each rank's chunk is a copy)
    "experts.gate_up_proj.codes": 1, "experts.gate_up_proj.scale": 1,
    "experts.down_proj.codes": 2, "experts.down_proj.scale": 2,
}


def partition_dim(key: str) -> int | None:
    return next((dim for suffix, dim in PARTITION_DIMS.items() if key.endswith(suffix)), None)


def shard_tensor(key: str, tensor: torch.Tensor, config: ZayaConfig, tp: int, rank: int) -> torch.Tensor:
    """The slice of canonical tensor ``key`` that ``rank`` holds (the tensor itself when replicated)."""
    d = config.head_dim
    q_heads, kv_heads = rank_heads(config, tp, rank)
    if key.endswith(("embed_tokens.weight", "lm_head.weight")):
        rows = padded_vocab(config, tp) // tp
        padded = torch.cat([tensor, tensor.new_zeros(rows * tp - tensor.shape[0], tensor.shape[1])])
        return padded[rank * rows:(rank + 1) * rows]
    if key.endswith("q_proj.weight") and "group_mean" not in key:
        return _head_rows(tensor, q_heads, d)
    if key.endswith(("k_proj.weight", "v_proj.weight", "value_delayed")):
        return _head_rows(tensor, kv_heads, d)
    if key.endswith("self_attn.temp"):
        return tensor[kv_heads]
    if "conv_qk_" in key:
        nq = config.num_attention_heads
        return _head_rows(tensor, q_heads + [nq + j for j in kv_heads], d)
    if key.endswith("o_proj.weight"):
        return _head_rows(tensor, q_heads, d, dim=1)
    if key.endswith(("experts.gate_up_proj", "experts.gate_up_proj.codes", "experts.gate_up_proj.scale")):
        size = tensor.shape[1] // 2 // tp
        gate, up = tensor.chunk(2, dim=1)
        return torch.cat([gate[:, rank * size:(rank + 1) * size], up[:, rank * size:(rank + 1) * size]], dim=1)
    if key.endswith(("experts.down_proj", "experts.down_proj.codes", "experts.down_proj.scale")):
        return tensor if tensor.shape[2] == 1 else tensor.chunk(tp, dim=2)[rank].contiguous()
    assert partition_dim(key) is None, f"no shard rule for {key}"
    return tensor


def group_mean_query(key: str, q_proj: torch.Tensor, config: ZayaConfig, tp: int, rank: int) -> dict:
    """From a layer's whole q_proj (``key``), when a rank holds part of a KV group: the rank's mean query
    projection of its KV group, a tensor only sharded models have."""
    if AttentionShard.for_tp(config, tp).whole_groups or not key.endswith("self_attn.q_proj.weight"):
        return {}
    nkv, d = config.num_key_value_heads, config.head_dim
    _, kv_heads = rank_heads(config, tp, rank)
    mean = q_proj.view(nkv, -1, d, q_proj.shape[-1]).to(torch.float32).mean(dim=1).to(q_proj.dtype)
    return {key.replace("q_proj", "q_group_mean_proj"): mean[kv_heads].reshape(-1, q_proj.shape[-1])}


def embedding_rank(tp: int, rank: int) -> dict:
    """The rank of the vocab-split embedding, a tensor only sharded models have."""
    return {"model.embed_tokens.rank": torch.tensor([rank], dtype=torch.int32)} if tp > 1 else {}


def rank_extras(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int, rank: int) -> dict:
    """Tensors only sharded models have: the rank of the vocab-split embedding and, when a rank holds part
    of a KV group, the group's mean query projection."""
    extras = embedding_rank(tp, rank)
    for i in range(config.num_hidden_layers):
        key = f"model.layers.{i}.self_attn.q_proj.weight"
        extras |= group_mean_query(key, state_dict[key], config, tp, rank)
    return extras


def rank_shards(key: str, tensor: torch.Tensor, config: ZayaConfig, tp: int, rank: int) -> dict:
    """What rank ``rank`` keeps of the canonical tensor ``key`` (its shard and any tensor derived from it),
    each owning its memory (a rank's state dict is these and ``embedding_rank``; loading one canonical tensor
    at a time, checkpoint.load_into's ``complete``, keeps them as each tensor is read)."""
    kept = {key: shard_tensor(key, tensor, config, tp, rank)} | group_mean_query(key, tensor, config, tp, rank)
    return {k: t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t
            for k, t in kept.items()}


def rank_state_dict(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int, rank: int) -> dict:
    """The state dict of rank model ``rank``, cut from a canonical state dict (of the tp=1 model)."""
    check_tp(config, tp)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < tp:
        raise ConfigError(f"rank={rank!r} is not a rank of tp_degree={tp}; use 0 to {tp - 1}.")
    kept = embedding_rank(tp, rank)
    for key, tensor in state_dict.items():
        kept |= rank_shards(key, tensor, config, tp, rank)
    return kept


def rank_state_dicts(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int) -> list[dict]:
    """Cut a canonical state dict into the state dicts of the ``tp`` rank models."""
    return [rank_state_dict(state_dict, config, tp, rank) for rank in range(tp)]


def neuron_state_dict(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int,
                      consume: bool = False) -> dict[str, torch.Tensor]:
    """One state dict whose sharded tensors are the rank slices concatenated along their partition dim, so
    that NxD's contiguous split by rank gives each rank exactly ``rank_state_dicts(...)[rank]``. Built key
    by key, so peak memory stays near two copies of the model; with ``consume`` each tensor is popped from
    ``state_dict`` once its concatenated form exists, so a caller that holds no other reference to it
    (scripts/convert.py) needs about one model plus one tensor."""
    check_tp(config, tp)
    extras = [rank_extras(state_dict, config, tp, rank) for rank in range(tp)]  # reads q_proj: before it goes
    out = {}
    for key in list(state_dict):
        tensor, dim = state_dict.pop(key) if consume else state_dict[key], partition_dim(key)
        out[key] = tensor if dim is None or tp == 1 else torch.cat(
            [shard_tensor(key, tensor, config, tp, rank) for rank in range(tp)], dim=dim)
        del tensor
    for key in extras[0]:
        out[key] = torch.cat([e[key] for e in extras], dim=partition_dim(key))
    return out


def split_neuron_state_dict(state_dict: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """What NxD's sharding hands ``rank``: contiguous chunks along each partition dim."""
    return {key: (t if partition_dim(key) is None else t.chunk(tp, dim=partition_dim(key))[rank].contiguous())
            for key, t in state_dict.items()}
