"""Tensor-parallel plan: which rank holds which slice of every weight, and the collectives between ranks.

One plan serves both backends. ``rank_state_dicts`` cuts a canonical (unsharded) state dict into per-rank
state dicts; ``neuron_state_dict`` concatenates those along each tensor's partition dim, so that NxD's
contiguous per-rank slicing returns exactly the same per-rank tensors. ``SimulatedTP`` runs the per-rank
models in one process (one thread per rank) with a thread all-reduce / all-gather, which proves the plan on
CPU with the same model code the Neuron backend traces.

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

import threading
from dataclasses import dataclass

import torch

from .config import ZayaConfig
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


def padded_vocab(config: ZayaConfig, tp: int) -> int:
    return -(-config.vocab_size // tp) * tp


class LocalComm:
    """Collectives of a single rank: identities."""

    rank, world_size = 0, 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x


class _ThreadGroup:
    """Rendezvous of ``world_size`` threads; reductions sum in rank order, so results are deterministic."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def exchange(self, rank: int, x: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = x
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return parts


class ThreadComm:
    """One rank's handle on a thread group: the collectives NxD would run between NeuronCores."""

    def __init__(self, group: _ThreadGroup, rank: int):
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.group.exchange(self.rank, x)
        out = parts[0].to(torch.float32)  # accumulate in fp32, as NxD's row-parallel reduce does
        for part in parts[1:]:
            out = out + part
        return out.to(x.dtype)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat(self.group.exchange(self.rank, x), dim=dim)


# ---------------------------------------------------------------------------------------------- the plan
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
    if key.endswith("experts.gate_up_proj"):
        size = tensor.shape[1] // 2 // tp
        gate, up = tensor.chunk(2, dim=1)
        return torch.cat([gate[:, rank * size:(rank + 1) * size], up[:, rank * size:(rank + 1) * size]], dim=1)
    if key.endswith("experts.down_proj"):
        return tensor.chunk(tp, dim=2)[rank].contiguous()
    assert partition_dim(key) is None, f"no shard rule for {key}"
    return tensor


def rank_extras(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int, rank: int) -> dict:
    """Tensors only sharded models have: the rank of the vocab-split embedding and, when a rank holds part
    of a KV group, the group's mean query projection."""
    extras = {}
    if tp > 1:
        extras["model.embed_tokens.rank"] = torch.tensor([rank], dtype=torch.int32)
    if not AttentionShard.for_tp(config, tp).whole_groups:
        nkv, d = config.num_key_value_heads, config.head_dim
        _, kv_heads = rank_heads(config, tp, rank)
        for i in range(config.num_hidden_layers):
            wq = state_dict[f"model.layers.{i}.self_attn.q_proj.weight"]
            mean = wq.view(nkv, -1, d, wq.shape[-1]).to(torch.float32).mean(dim=1).to(wq.dtype)
            extras[f"model.layers.{i}.self_attn.q_group_mean_proj.weight"] = mean[kv_heads].reshape(-1, wq.shape[-1])
    return extras


def rank_state_dicts(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int) -> list[dict]:
    """Cut a canonical state dict (of the tp=1 model) into the state dicts of the ``tp`` rank models."""
    check_tp(config, tp)
    return [{key: shard_tensor(key, tensor, config, tp, rank) for key, tensor in state_dict.items()}
            | rank_extras(state_dict, config, tp, rank) for rank in range(tp)]


def neuron_state_dict(state_dict: dict[str, torch.Tensor], config: ZayaConfig, tp: int) -> dict[str, torch.Tensor]:
    """One state dict whose sharded tensors are the rank slices concatenated along their partition dim, so
    that NxD's contiguous split by rank gives each rank exactly ``rank_state_dicts(...)[rank]``. Built key
    by key, so peak memory stays near two copies of the model."""
    check_tp(config, tp)
    out = {}
    for key, tensor in state_dict.items():
        dim = partition_dim(key)
        out[key] = tensor if dim is None or tp == 1 else torch.cat(
            [shard_tensor(key, tensor, config, tp, rank) for rank in range(tp)], dim=dim)
    extras = [rank_extras(state_dict, config, tp, rank) for rank in range(tp)]
    for key in extras[0]:
        out[key] = torch.cat([e[key] for e in extras], dim=partition_dim(key))
    return out


def split_neuron_state_dict(state_dict: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """What NxD's sharding hands ``rank``: contiguous chunks along each partition dim."""
    return {key: (t if partition_dim(key) is None else t.chunk(tp, dim=partition_dim(key))[rank].contiguous())
            for key, t in state_dict.items()}


# ---------------------------------------------------------------------------------------------- simulation
class SimulatedTP:
    """The per-rank models of the sharding plan run in one process, one thread per rank, joined by thread
    collectives. Same interface as ZayaForCausalLM: forward, prefill, decode, new_state, generate."""

    def __init__(self, config: ZayaConfig, ranks: list):
        self.config, self.ranks, self.tp = config, ranks, len(ranks)

    @classmethod
    def from_model(cls, model, tp: int) -> "SimulatedTP":
        return cls.from_state_dicts(model.config, rank_state_dicts(model.state_dict(), model.config, tp),
                                    model.dtype, model.device)

    @classmethod
    def from_state_dicts(cls, config: ZayaConfig, shards: list[dict], dtype, device) -> "SimulatedTP":
        from .model import ZayaForCausalLM

        group = _ThreadGroup(len(shards))
        ranks = []
        for rank, shard in enumerate(shards):
            model = ZayaForCausalLM.empty(config, ThreadComm(group, rank), dtype, device)
            model.load_state_dict(shard, strict=True)
            ranks.append(model.eval().requires_grad_(False))
        return cls(config, ranks)

    @property
    def dtype(self):
        return self.ranks[0].dtype

    @property
    def device(self):
        return self.ranks[0].device

    def _run(self, fn):
        """fn(rank_model, rank) on every rank concurrently; returns rank 0's result."""
        results, errors = [None] * self.tp, []
        group = self.ranks[0].comm.group

        def work(rank: int) -> None:
            try:
                with torch.inference_mode():
                    results[rank] = fn(self.ranks[rank], rank)
            except BaseException as exc:  # a failing rank must not leave the others waiting forever
                errors.append(exc)
                group.barrier.abort()

        threads = [threading.Thread(target=work, args=(rank,)) for rank in range(self.tp)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            group.barrier.reset()
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return results[0]

    def __call__(self, *args, **kwargs):
        return self._run(lambda model, rank: model(*args, **kwargs))

    def new_state(self, max_batch: int, max_seq: int):
        return RankStates([model.new_state(max_batch, max_seq) for model in self.ranks])

    def prefill(self, input_ids, lengths, seq_ids, state):
        return self._run(lambda model, rank: model.prefill(input_ids, lengths, seq_ids, state[rank]))

    def decode(self, input_ids, positions, seq_ids, state, kv_len=None):
        return self._run(lambda model, rank: model.decode(input_ids, positions, seq_ids, state[rank], kv_len))

    def generate(self, input_ids, attention_mask=None, **kwargs):
        from .generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


class RankStates(list):
    """Per-rank ZayaState objects of a SimulatedTP model."""

    @property
    def max_seq(self) -> int:
        return self[0].max_seq


def describe_plan(config: ZayaConfig, tp: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> list[str]:
    """Human-readable sharding plan: per-rank heads, shapes and bytes (weights, KV cache, CCA state)."""
    from .model import ZayaForCausalLM

    check_tp(config, tp)
    with torch.device("meta"):
        rank_model = ZayaForCausalLM(config, ThreadComm(_ThreadGroup(tp), 0)).to(dtype)
    item = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() * p.element_size() for p in rank_model.parameters())
    shard, d, layers = rank_model.model.shard, config.head_dim, config.num_hidden_layers
    kv = 2 * layers * batch_size * shard.kv_heads * seq_len * d * item
    state = layers * batch_size * ((shard.q_heads + shard.kv_heads) * d * config.conv_state_len + shard.kv_heads * d) * item
    attn = rank_model.model.layers[0].self_attn
    experts = rank_model.model.layers[0].mlp.experts
    q_heads, kv_heads = rank_heads(config, tp, 0)
    def size(n: float) -> str:
        return f"{n / 1024 ** 3:.2f} GiB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:.2f} MiB"

    return [
        f"tensor parallel degree {tp}: rank 0 holds query heads {q_heads}, KV heads {kv_heads}"
        + (" (KV heads replicated across ranks)" if tp > config.num_key_value_heads else ""),
        f"per rank: q_proj {list(attn.q_proj.weight.shape)}, k_proj {list(attn.k_proj.weight.shape)}, "
        f"v_proj {list(attn.v_proj.weight.shape)}, conv channels {attn.conv_qk_depthwise.channels}, "
        f"o_proj {list(attn.o_proj.weight.shape)}",
        f"per rank: experts gate_up {list(experts.gate_up_proj.shape)}, down {list(experts.down_proj.shape)}; "
        f"router replicated; vocab rows {rank_model.model.embed_tokens.weight.shape[0]}",
        f"per rank bytes: weights {size(weights)}, KV cache {size(kv)} (batch {batch_size} x {seq_len} tokens), "
        f"CCA state {size(state)}",
    ]
