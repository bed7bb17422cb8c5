"""Simulated tensor parallelism: the per-rank models of the sharding plan (zaya1.sharding) run in one
process, one thread per rank, joined by thread collectives (the all-reduce / all-gather NxD runs between
NeuronCores). It proves the plan on CPU with the same model code the Neuron backend traces."""

from __future__ import annotations

import threading

import torch

from ..config import ZayaConfig
from ..generation import generate
from ..model import ZayaForCausalLM, ZayaState
from ..sharding import check_tp, rank_heads, rank_state_dicts


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


def run_on_ranks(models: list, fn):
    """fn(model, rank) for every rank model (each with a ``comm``) concurrently, one thread each, without
    autograd; returns rank 0's result. A failing rank aborts the group's barrier, so the others stop instead
    of waiting forever."""
    if len(models) == 1:
        with torch.inference_mode():
            return fn(models[0], 0)
    group, results, errors = models[0].comm.group, [None] * len(models), []

    def work(rank: int) -> None:
        try:
            with torch.inference_mode():
                results[rank] = fn(models[rank], rank)
        except BaseException as exc:
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        group.barrier.reset()
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results[0]


def thread_comms(tp: int) -> list[ThreadComm]:
    """The collectives of ``tp`` thread ranks, joined in one group."""
    group = _ThreadGroup(tp)
    return [ThreadComm(group, rank) for rank in range(tp)]


def from_pretrained(path, tp_degree: int, **kwargs):
    """A checkpoint directory (either layout) as ``tp_degree`` simulated ranks: a ``SimulatedTP``, or the plain
    ZayaForCausalLM when ``tp_degree`` is 1. ``kwargs``: those of ``ZayaForCausalLM.from_pretrained``. A
    degree the plan cannot split is refused from config.json, before any weight is read."""
    check_tp(ZayaConfig.from_pretrained(path), tp_degree)
    return shard(ZayaForCausalLM.from_pretrained(path, **kwargs), tp_degree)


def shard(model: ZayaForCausalLM, tp_degree: int):
    """``model`` as ``tp_degree`` simulated ranks (a ``SimulatedTP``), or ``model`` itself when it is 1."""
    check_tp(model.config, tp_degree)
    return model if tp_degree == 1 else SimulatedTP.from_model(model, tp_degree)


class SimulatedTP:
    """The per-rank models of the sharding plan run in one process, one thread per rank, joined by thread
    collectives. Same interface as ZayaForCausalLM: forward, prefill, decode, new_state, generate."""

    def __init__(self, config: ZayaConfig, ranks: list):
        self.config, self.ranks, self.tp = config, ranks, len(ranks)
        self.generation_config = None  # generation_config.json's defaults, as on ZayaForCausalLM (from_model)

    @classmethod
    def from_model(cls, model, tp: int) -> "SimulatedTP":
        tp_model = cls.from_state_dicts(model.config, rank_state_dicts(model.state_dict(), model.config, tp),
                                        model.dtype, model.device)
        tp_model.generation_config = getattr(model, "generation_config", None)
        return tp_model

    @classmethod
    def from_state_dicts(cls, config: ZayaConfig, shards: list[dict], dtype, device) -> "SimulatedTP":
        ranks = []
        for shard, comm in zip(shards, thread_comms(len(shards))):
            model = ZayaForCausalLM.empty(config, comm, dtype, device)
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
        return run_on_ranks(self.ranks, fn)

    def __call__(self, *args, **kwargs):
        return self._run(lambda model, rank: model(*args, **kwargs))

    def new_state(self, max_batch: int, max_seq: int):
        return RankStates([model.new_state(max_batch, max_seq) for model in self.ranks])

    def prefill(self, input_ids, lengths, seq_ids, state):
        return self._run(lambda model, rank: model.prefill(input_ids, lengths, seq_ids, state[rank]))

    def decode(self, input_ids, positions, seq_ids, state, kv_len=None):
        return self._run(lambda model, rank: model.decode(input_ids, positions, seq_ids, state[rank], kv_len))

    def generate(self, input_ids, attention_mask=None, **kwargs):
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


class RankStates(list):
    """Per-rank ZayaState objects of a SimulatedTP model."""

    @property
    def max_seq(self) -> int:
        return self[0].max_seq


def describe_plan(config: ZayaConfig, tp: int, batch_size: int, seq_len: int, dtype: torch.dtype,
                  memory_per_rank: int | None = None) -> list[str]:
    """Human-readable sharding plan: per-rank heads, shapes and bytes (weights, quantized experts as stored,
    KV cache, CCA state); with ``memory_per_rank`` (bytes, e.g. a trn2 logical core's HBM) whether they fit
    and how many more KV tokens would."""
    check_tp(config, tp)
    with torch.device("meta"):
        rank_model = ZayaForCausalLM(config, ThreadComm(_ThreadGroup(tp), 0)).to(dtype)
    weights = sum(t.numel() * t.element_size() for t in [*rank_model.parameters(), *rank_model.buffers()])
    cache = ZayaState(rank_model.model, batch_size, seq_len)  # on the meta device: shapes, no memory
    kv = cache.nbytes_per_token() * batch_size * seq_len
    state = cache.nbytes_per_sequence() * batch_size
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
    ] + ([] if memory_per_rank is None else [_fit(memory_per_rank, weights + kv + state,
                                                   cache.nbytes_per_token(), size)])


def _fit(memory: int, used: int, per_token: int, size) -> str:
    left = memory - used
    verdict = (f"fits: {size(left)} left = {left // per_token:,} more KV tokens (batch x seq)" if left >= 0
               else f"does NOT fit: {size(-left)} over")
    return (f"per rank memory {size(memory)}: weights + KV + state {size(used)} ({100 * used / memory:.0f}%), "
            f"{verdict}; before runtime overhead and compiler scratch")
