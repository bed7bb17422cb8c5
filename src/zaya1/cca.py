"""Compressed convolutional attention (CCA), written as functions of explicit state.

Per token t the block computes (architecture doc section 3.3):

    P_t   = [x_t Wq^T | x_t Wk^T]                     packed q/k projections        [C = (nq + nkv) * d]
    Z_t   = grouped_conv(depthwise_conv(P_{t-2..t}))   two causal convs, one group per head
    q_h   = Z_t[h] + (Q0_h + K0_j) / 2                 j = h // G (block grouping)
    k_j   = Z_t[j] + mean_h (Q0_h + K0_j) / 2
    v     = [x_t Wcur^T | x_{t-1} Wdel^T]              KV head 0 = current token, KV head 1 = previous token
    q, k  = L2-normalised to sqrt(d), k scaled by the learned temperature, partial RoPE

The only history a token needs besides K/V is the last ``conv_state_len`` packed columns (conv state) and
the previous token's value projection (value state); both are inputs and outputs of ``CCAttention.forward``
so that the same code serves a full-sequence forward, right-padded prefill and one-token decode.

Tensor parallel: a module is built for one rank's heads (see ``sharding.AttentionShard``). The packed conv
channels are the rank's q heads followed by its KV heads, and every conv group is one head, so the conv
never crosses ranks. Which value channels are delayed is a per-rank tensor (``value_delayed``) instead of a
rank-dependent Python branch, so one traced graph serves every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SLIDING, ZayaConfig
from .kernels import Linear, fp32_internals, neuron_graph


class ManualConv1d(nn.Module):
    """``nn.Conv1d(channels, channels, kernel_size, groups=groups, padding=0)`` with elementwise ops and a
    batched matmul (no convolution primitive: NxD / neuronx-cc handle these at any sequence length).
    The parameters have nn.Conv1d's layout: weight [channels, channels // groups, kernel_size], bias [channels].
    Like nn.Conv1d's bf16 / fp16 kernels, it accumulates (bias included) in fp32 and rounds once to x's dtype."""

    def __init__(self, channels: int, kernel_size: int, groups: int, bias: bool = True):
        super().__init__()
        self.channels, self.kernel_size, self.groups = channels, kernel_size, groups
        self.weight = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C, T - K + 1]
        batch, channels, time = x.shape
        out_len = time - self.kernel_size + 1
        w = self.weight.to(torch.float32)
        taps = [x[..., k:k + out_len].to(torch.float32) for k in range(self.kernel_size)]
        if w.shape[1] == 1:  # depthwise
            out = sum(w[:, 0, k, None] * tap for k, tap in enumerate(taps))
        else:
            groups, group_size = self.groups, channels // self.groups
            width = group_size * self.kernel_size
            # taps become the fastest input axis, the weight's own layout, and the batch joins the columns:
            # [G, Cg, Cg * K] x [G, Cg * K, B * T'] (a weight broadcast over B would be copied per sequence)
            cols = torch.stack(taps, dim=2).view(batch, groups, width, out_len).permute(1, 2, 0, 3)
            out = torch.matmul(w.view(groups, group_size, width), cols.reshape(groups, width, batch * out_len))
            out = out.view(groups, group_size, batch, out_len).permute(2, 0, 1, 3).reshape(batch, channels, out_len)
        if self.bias is not None:
            out = out + self.bias.to(torch.float32)[:, None]
        return out.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(positions: torch.Tensor, theta: float, rotary_dim: int, dtype: torch.dtype):
    """positions [B, S] -> cos, sin [B, S, rotary_dim], computed in fp32 and rounded to the model dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32,
                                             device=positions.device) / rotary_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, heads, d]; rotates the first cos.shape[-1] dims (neox rotate-half), the rest pass through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, :, None], sin[:, :, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def l2_normalize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x * scale / ||x||, the norm clamped below at x's dtype eps (as upstream transformers). In a Neuron graph
    computed in fp32 and rounded once to x's dtype: upstream's bf16 ``x.norm`` lowers to a bf16 reduce that
    neuronx-cc need not accumulate in fp32. Eager CPU/GPU keep upstream's ops (PyTorch's bf16 norm accumulates
    in fp32; rounding the norm and scale once more instead moved one near-tie of the real-width accuracy test,
    max |dlogit| 0.37 -> 2.67 on the emulated-bf16 kernels). float32 is the same either way."""
    eps = torch.finfo(x.dtype).eps
    if not neuron_graph(x):
        return x * (scale / x.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))
    wide = x.to(torch.float32)
    return (wide * (scale / wide.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, past=None) -> torch.Tensor:
    """q [B, S, nq, d], k/v [B, nkv, T, d], allowed [B, S, T] bool -> [B, S, nq * d]. Query head h reads KV
    head h // (nq / nkv). Softmax in fp32, like the eager reference.

    ``past``: None or (k, v [B, nkv, P, d], allowed [B, S, P]) of cached keys, scored apart from the active
    ones so the cache is never copied (NxDI's prior / active split), the two value products summed. That
    sum rounds once more than upstream's single product over the concatenated cache, so eager CPU/GPU
    decode concatenates instead (``concat_cache``), bitwise with transformers in bf16."""
    batch, seq, nq, dim = q.shape
    nkv = k.shape[1]
    if fp32_internals(q):  # fused, fp32 scores and accumulation inside (as transformers' default sdpa)
        if past is not None:
            k, v, allowed = concat_cache(k, v, allowed, past)
        # a query with no allowed key (a left pad) attends to all keys, as the eager path's finite fill does
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=allowed[:, None],
                                             enable_gqa=nq != nkv)  # [B, nq, S, d]
        return out.transpose(1, 2).reshape(batch, seq, nq * dim)
    q = q.view(batch, seq, nkv, nq // nkv, dim).permute(0, 2, 3, 1, 4)  # [B, nkv, G, S, d]

    def scores(keys, mask):  # keys [B, nkv, T, d], mask [B, S, T] -> [B, nkv, G, S, T]
        out = torch.matmul(q, keys[:, :, None].transpose(-1, -2)) * dim ** -0.5
        return out.masked_fill(~mask[:, None, None], torch.finfo(out.dtype).min)

    active = scores(k, allowed)
    if past is None:
        out = torch.matmul(torch.softmax(active, dim=-1, dtype=torch.float32).to(v.dtype), v[:, :, None])
    else:
        past_k, past_v, past_allowed = past
        probs = torch.softmax(torch.cat([scores(past_k, past_allowed), active], dim=-1), dim=-1,
                              dtype=torch.float32).to(v.dtype)
        cached = past_k.shape[2]
        out = (torch.matmul(probs[..., :cached], past_v[:, :, None])
               + torch.matmul(probs[..., cached:], v[:, :, None]))  # [B, nkv, G, S, d]
    return out.permute(0, 3, 1, 2, 4).reshape(batch, seq, nq * dim)


def concat_cache(k, v, allowed, past):
    """The active K/V [B, nkv, S, d] and mask appended to ``past`` (k, v, allowed): one key axis."""
    past_k, past_v, past_allowed = past
    return torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2), torch.cat([past_allowed, allowed], dim=-1)


class CCAttention(nn.Module):
    """One rank's share of a ZAYA1 attention block (all of it when tp_degree == 1)."""

    def __init__(self, config: ZayaConfig, layer_idx: int, shard):
        super().__init__()
        d, hidden = config.head_dim, config.hidden_size
        self.head_dim, self.nq, self.nkv = d, shard.q_heads, shard.kv_heads
        self.group_mean_from_local = shard.whole_groups  # else the group's q mean is its own projection
        self.sliding_window = config.sliding_window if config.layer_types[layer_idx] == SLIDING else None
        channels = (self.nq + self.nkv) * d

        self.q_proj = Linear(hidden, self.nq * d, bias=False)
        self.k_proj = Linear(hidden, self.nkv * d, bias=False)
        if not self.group_mean_from_local:
            # mean over the KV group's query heads of Q0_h == x @ mean_h(Wq_h)^T
            self.q_group_mean_proj = Linear(hidden, self.nkv * d, bias=False)
        # rows: this rank's KV heads of [Wcur; Wdel]; value_delayed marks rows read from the previous token
        self.v_proj = Linear(hidden, self.nkv * d, bias=False)
        self.value_delayed = nn.Parameter(torch.zeros(self.nkv * d), requires_grad=False)
        self.conv_qk_depthwise = ManualConv1d(channels, config.cca_time0, groups=channels)
        self.conv_qk_grouped = ManualConv1d(channels, config.cca_time1, groups=self.nq + self.nkv)
        self.temp = nn.Parameter(torch.empty(self.nkv))
        self.o_proj = Linear(self.nq * d, hidden, bias=False)

    def project(self, x: torch.Tensor, conv_state: torch.Tensor, value_state: torch.Tensor):
        """x [B, S, H] (pad tokens already zeroed), conv_state [B, C, K-1], value_state [B, Cv]
        -> q [B, S, nq, d], k/v [B, S, nkv, d], extended packed columns [B, C, K-1+S],
        extended value projections [B, 1+S, Cv] (state candidates, gathered by the caller)."""
        batch, seq, _ = x.shape
        d, nq, nkv = self.head_dim, self.nq, self.nkv
        q0 = self.q_proj(x)  # [B, S, nq * d]
        k0 = self.k_proj(x)  # [B, S, nkv * d]
        packed = torch.cat([conv_state.to(x.dtype), torch.cat([q0, k0], dim=-1).transpose(1, 2)], dim=-1)
        mixed = self.conv_qk_grouped(self.conv_qk_depthwise(packed)).transpose(1, 2)  # [B, S, C]

        k0_heads = k0.view(batch, seq, nkv, 1, d)
        q_res = (q0.view(batch, seq, nkv, nq // nkv, d) + k0_heads) * 0.5  # [B, S, nkv, G_local, d]
        if self.group_mean_from_local:
            k_res = q_res.mean(dim=-2)
        else:
            k_res = ((self.q_group_mean_proj(x).view(batch, seq, nkv, 1, d) + k0_heads) * 0.5)[..., 0, :]
        q = mixed[..., :nq * d].reshape(batch, seq, nq, d) + q_res.reshape(batch, seq, nq, d)
        k = mixed[..., nq * d:].reshape(batch, seq, nkv, d) + k_res

        v_all = torch.cat([value_state[:, None].to(x.dtype), self.v_proj(x)], dim=1)  # [B, 1+S, Cv]
        v = torch.where(self.value_delayed > 0, v_all[:, :-1], v_all[:, 1:]).view(batch, seq, nkv, d)
        return q, k, v, packed, v_all

    def qk_norm_rope(self, q, k, cos, sin):
        scale = self.head_dim ** 0.5
        q = l2_normalize(q, scale)
        k = l2_normalize(k, scale) * self.temp[:, None]
        return apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor) -> torch.Tensor:
        """[B, S] query positions, [B, T] key positions and validity -> [B, S, T] causal (+window) mask."""
        rel = q_pos[:, :, None] - k_pos[:, None, :]
        allowed = (rel >= 0) & k_valid[:, None, :]
        if self.sliding_window is not None:
            allowed = allowed & (rel < self.sliding_window)
        return allowed

    def forward(self, x, cos, sin, positions, token_mask, conv_state, value_state, past=None):
        """x [B, S, H] normalised block input; positions [B, S]; token_mask [B, S] bool (False = padding);
        conv_state [B, C, K-1] and value_state [B, Cv] hold the history before x (zeros for a new sequence);
        past: None (attend within x) or (k [B, nkv, T, d], v [B, nkv, T, d], k_pos [B, T], k_valid [B, T]).

        Returns (partial output [B, S, H] (sum over ranks = attention output), new k, new v [B, nkv, S, d],
        packed columns [B, C, K-1+S], value projections [B, 1+S, Cv])."""
        x = x * token_mask[..., None].to(x.dtype)  # pads must not reach the conv or the value state
        q, k, v, packed, v_all = self.project(x, conv_state, value_state)
        q, k = self.qk_norm_rope(q, k, cos, sin)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, nkv, S, d]
        allowed, cached = self.allowed(positions, positions, token_mask), None
        if past is not None:
            past_k, past_v, past_pos, past_valid = past
            cached = (past_k, past_v, self.allowed(positions, past_pos, past_valid))
        if cached is not None and not neuron_graph(past_k):  # eager CPU/GPU: upstream's rounding
            out = attention(q, *concat_cache(k, v, allowed, cached))
        else:  # a graph for Neuron (XLA): the cache is read in place
            out = attention(q, k, v, allowed, cached)
        return self.o_proj(out), k, v, packed, v_all


def gather_state(packed: torch.Tensor, v_all: torch.Tensor, lengths: torch.Tensor, state_len: int):
    """State after a row's first ``lengths`` chunk tokens: the ``state_len`` packed columns ending at its last
    one and its value projection (the state before the chunk for lengths 0). packed [B, C, state_len + S],
    v_all [B, 1 + S, Cv], lengths [B] real tokens of each row -> conv_state [B, C, state_len], value_state
    [B, Cv]; lengths [B, N] (N cut points per row, e.g. block boundaries) -> [B, N, C, state_len], [B, N, Cv]."""
    batch, channels, _ = packed.shape
    cuts = lengths.reshape(batch, -1).to(torch.long)  # [B, N]
    cols = cuts[..., None] + torch.arange(state_len, device=packed.device)  # extended index of the columns
    conv = packed[:, None].expand(-1, cuts.shape[1], -1, -1).gather(
        3, cols[:, :, None, :].expand(-1, -1, channels, -1))  # [B, N, C, state_len]
    value = v_all[:, None].expand(-1, cuts.shape[1], -1, -1).gather(
        2, cuts[..., None, None].expand(-1, -1, 1, v_all.shape[2]))[:, :, 0]  # [B, N, Cv]
    return conv.reshape(*lengths.shape, channels, state_len), value.reshape(*lengths.shape, v_all.shape[2])
