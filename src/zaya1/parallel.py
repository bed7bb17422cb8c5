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
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat(self.group.exchange(self.rank, x), dim=dim)
