"""ZAYA1 mixture of experts: MLP router with expert depth averaging (EDA), a skip class, top-1 SwiGLU experts.

Router (architecture doc section 3.4), per token u [H] and previous MoE layer's router state s_prev [R]:

    s      = u Wd^T + bd  (+ s_prev * lambda on every MoE layer but the first)   -> next layer's s_prev
    logits = W3 gelu(W2 gelu(W1 rmsnorm(s) + c1) + c2)                            [E + 1], class E = skip
    p      = softmax(logits) in the model dtype
    e*     = argmax(fp32(p) + balancing_biases)    (biases steer the choice only)
    y      = p[e*] * expert_{e*}(u)   or, for the skip class, 0 (hf) / p[e*] * u (original)

Expert dispatch, all with static shapes and exact (no token dropping):

* ``gather``    (decode): every token gathers its own expert's weights, so a step reads only the selected
                experts. T tokens read T experts, so it is for small T. On the CPU nothing is copied: it
                runs ``grouped`` (views of each chosen expert's weights, each read once, by the products
                measured fastest, kernels.py), under torch.compile as the opaque operator
                ``zaya1::grouped_experts``, or, where the fused product was measured fastest for one row
                of an expert's weights, as indexed loads of one fused multiply-and-sum kernel per product.
* ``blockwise`` (prefill): tokens are laid out by expert (in token order, no sort: a token's row is
                its expert's first row + the number of earlier tokens of that expert) in blocks of
                ``block_size`` rows that each belong to one expert, every expert's group padded to whole
                blocks. At most K + (T - K) // block blocks exist (K = min(E, T)), a static bound, so
                compute is about T + E * block rows instead of E * T, and each block reads one expert's
                weights. The block size comes from T (``block_size_for``: the trn2 roofline optimum, see
                docs/trainium-cost.md); the counts use cumulative sums by triangular matmul (NxD's
                convention), no cumsum or sort over tokens. This is the shape of NxD's blockwise MoE and
                traces without data-dependent shapes.
* ``grouped``   (eager CPU/GPU only): loops over the experts that received tokens; fastest in eager mode
                but data-dependent, so never used while tracing or exporting.

Under tensor parallelism each rank holds a slice of every expert's intermediate dimension; outputs are
partial sums that the caller all-reduces. The router is replicated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FP8, ZayaConfig
from .errors import ConfigError
from .kernels import Linear, cached_choice, fp32_internals, linear, measured, neuron_graph, widen
from .quantization import QuantizedWeight

# the activations of transformers' ACT2FN that are one torch function (the same computation)
_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh,
                "sigmoid": torch.sigmoid, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def activation(name: str):
    """The experts' gate activation by its transformers name (config ``hidden_act``): a torch function, or
    transformers' own ACT2FN entry for the rest of its table."""
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    try:
        from transformers.activations import ACT2FN
    except ImportError:
        raise ConfigError(f"hidden_act={name!r} needs transformers' activation table (pip install transformers); "
                          f"without it zaya1 knows {sorted(_ACTIVATIONS)}.") from None
    if name not in ACT2FN:
        raise ConfigError(f"hidden_act={name!r} is not an activation transformers knows; use one of "
                          f"{sorted(ACT2FN)}.")
    return ACT2FN[name]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class ZayaRouter(nn.Module):
    def __init__(self, config: ZayaConfig, use_eda: bool):
        super().__init__()
        r = config.router_hidden_size
        self.num_experts = config.num_experts
        self.down_proj = Linear(config.hidden_size, r, bias=True)
        self.states_scale = nn.Parameter(torch.empty(r)) if use_eda else None
        self.norm = RMSNorm(r, config.router_norm_eps)
        self.fc1 = Linear(r, r, bias=True)
        self.fc2 = Linear(r, r, bias=True)
        self.out_proj = Linear(r, config.num_router_classes, bias=False)
        # a weight (not a buffer, which tracing would freeze), kept fp32 in every model dtype
        self.balancing_biases = nn.Parameter(torch.zeros(config.num_router_classes), requires_grad=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.balancing_biases.data = self.balancing_biases.data.to(torch.float32)  # survives model.to(dtype)
        return self

    def forward(self, u: torch.Tensor, prev_state: torch.Tensor | None):
        """u [..., H] -> expert index [...] (num_experts = skip), route weight [...], router state [..., R]
        (fp32 when ``fp32_internals``: the MLP then runs in fp32 on fp32 copies of its small weights)."""
        wide = fp32_internals(u)

        def lin(layer, x):
            if not wide:
                return layer(x)
            return F.linear(x, layer.weight.float(), None if layer.bias is None else layer.bias.float())

        state = lin(self.down_proj, u.float() if wide else u)
        if self.states_scale is not None and prev_state is not None:  # NxDI keeps "*scale" params fp32
            state = state + prev_state.to(state.dtype) * self.states_scale.to(state.dtype)
        h = F.gelu(lin(self.fc1, self.norm(state)))
        probs = torch.softmax(lin(self.out_proj, F.gelu(lin(self.fc2, h))), dim=-1)
        choice = torch.argmax(probs.to(torch.float32) + self.balancing_biases, dim=-1)  # lowest index on ties
        weight = probs.gather(-1, choice[..., None])[..., 0].to(u.dtype)
        return choice, weight, state


TRN2_HBM_BYTES_PER_S, TRN2_BF16_FLOPS = 2.9e12, 667e12  # one Trainium2 chip (trn2.3xlarge)
# Rows of a block at which a bf16 expert's two matmuls take as long as streaming its weights from HBM:
# (2 x rows x 3IH FLOPs) / FLOPS == (3IH x 2 bytes) / bandwidth, whatever the widths or tp.
TRN2_RIDGE_ROWS = TRN2_BF16_FLOPS / TRN2_HBM_BYTES_PER_S
BLOCK_SIZES = (16, 32, 64, 128, 256, 512)  # NxD's blockwise MoE uses 512


def block_size_for(tokens: int, num_experts: int) -> int:
    """The block size of ``tokens`` rows (a context bucket x batch) that minimises the roofline time of the
    static block schedule: blocks x max(weight load, block matmul). Small buckets get one block per expert
    (NxD's all-experts regime below its block size); large ones 256 (about the trn2 ridge)."""
    used = min(num_experts, tokens)
    fits = [b for b in BLOCK_SIZES if b < 2 * tokens] or [BLOCK_SIZES[0]]

    def cost(block: int) -> float:
        return (used + (tokens - used) // block) * max(1.0, block / TRN2_RIDGE_ROWS)

    return min(fits, key=lambda b: (cost(b), b))


def cumsum_by_matmul(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Inclusive cumulative sum over dim 0 of x [T, N] (float32) with lower-triangular matmuls, no cumsum op
    (as NxD's utils/tensor_utils.cumsum): within chunks of ``chunk`` rows, then across the chunk totals.
    Exact for integer values below 2 ** 24."""
    tokens, width = x.shape
    size = min(chunk, tokens)
    chunks = -(-tokens // size)
    parts = F.pad(x, (0, 0, 0, chunks * size - tokens)).view(chunks, size, width)
    ones = torch.ones(max(size, chunks), max(size, chunks), dtype=x.dtype, device=x.device)
    within = torch.matmul(ones[:size, :size].tril(), parts)  # [chunks, size, N]
    before = torch.matmul(ones[:chunks, :chunks].tril(-1), within[:, -1])  # totals of the earlier chunks
    return (within + before[:, None]).reshape(chunks * size, width)[:tokens]


class ZayaExperts(nn.Module):
    """Stacked gated experts, act(gate) * up (SwiGLU with ZAYA1's silu). gate_up_proj [E, 2I, H] (rows: gate
    then up), down_proj [E, H, I]; I is this rank's share of moe_intermediate_size. Both are parameters, or
    for a quantized checkpoint QuantizedWeight (fp8 / mxfp4 as stored; indexing dequantizes the experts a step
    reads). ``block_size`` None: chosen per call from the token count (``block_size_for``)."""

    def __init__(self, config: ZayaConfig, intermediate: int, block_size: int | None = None):
        super().__init__()
        self.num_experts, self.block_size = config.num_experts, block_size
        self.hidden_act, self.act = config.hidden_act, activation(config.hidden_act)
        shapes = {"gate_up_proj": (config.num_experts, 2 * intermediate, config.hidden_size),
                  "down_proj": (config.num_experts, config.hidden_size, intermediate)}
        for name, shape in shapes.items():  # quantized: stored codes + scales, dequantized where indexed
            setattr(self, name, nn.Parameter(torch.empty(shape)) if config.expert_quantization is None
                    else QuantizedWeight(config.expert_quantization, *shape))

    def _swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up

    def _bmm(self, x: torch.Tensor, proj, index: torch.Tensor) -> torch.Tensor:
        """x [n, r, K] times the selected experts' weights [n, N, K]^T -> [n, r, N]. fp8 experts: the codes
        go into the product and the row scales multiply its result, so a traced graph reads one byte per
        weight and never holds a dequantized copy (the eager CPU path dequantizes: ``grouped``)."""
        if isinstance(proj, QuantizedWeight) and proj.kind == FP8:
            codes, scale = proj.stored(index)  # [n, N, K], [n, N, 1]
            return torch.bmm(x, codes.to(x.dtype).transpose(1, 2)) * scale.to(x.dtype).transpose(1, 2)
        return torch.bmm(x, proj[index].transpose(1, 2))

    def gather(self, x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [T, H], expert [T] in [0, E), weight [T] -> [T, H]; reads T expert weight sets."""
        if x.device.type == "cpu" and not neuron_graph(x):
            if not torch.compiler.is_compiling():
                return self.grouped(x, expert, weight)  # views of each chosen expert, read once
            dense = not isinstance(self.gate_up_proj, QuantizedWeight)  # quantized: dequantized where gathered
            if dense and not (measured(x, self.gate_up_proj)
                              and cached_choice(*self.gate_up_proj.shape[1:], 1) == "fused"):
                return torch.ops.zaya1.grouped_experts(x, expert, weight, self.gate_up_proj, self.down_proj,
                                                       self.hidden_act)
            h = (self.gate_up_proj[expert].float() * widen(x)[:, None]).sum(-1).to(x.dtype)  # [T, 2I]
            out = (self.down_proj[expert].float() * widen(self._swiglu(h))[:, None]).sum(-1).to(x.dtype)
            return out * weight[:, None]
        h = self._bmm(x[:, None], self.gate_up_proj, expert)  # [T, 1, 2I]
        out = self._bmm(self._swiglu(h), self.down_proj, expert)[:, 0]
        return out * weight[:, None]

    def blockwise(self, x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        tokens, hidden = x.shape
        num_experts = self.num_experts
        block = self.block_size or block_size_for(tokens, num_experts)
        used = min(num_experts, tokens)
        num_blocks = used + (tokens - used) // block  # static bound: sum_e ceil(n_e / block), sum_e n_e = T
        onehot = (expert[:, None] == torch.arange(num_experts, device=x.device)).to(torch.float32)  # [T, E]
        padded = (onehot.sum(0) + block - 1).div(block, rounding_mode="floor") * block  # rows per expert
        group_end = cumsum_by_matmul(padded[:, None])[:, 0]  # [E]
        rank_in_group = (cumsum_by_matmul(onehot) * onehot).sum(-1) - 1  # earlier tokens of the same expert
        slot = ((group_end - padded)[expert] + rank_in_group).to(torch.long)  # [T] row in the block layout
        block_start = torch.arange(num_blocks, device=x.device, dtype=torch.float32)[:, None] * block
        block_expert = (group_end[None, :] <= block_start).sum(-1).clamp_max(num_experts - 1)  # [blocks]
        rows = x.new_zeros(num_blocks * block, hidden).index_copy(0, slot, x).view(num_blocks, block, hidden)
        h = self._bmm(rows, self.gate_up_proj, block_expert)  # [blocks, block, 2I]
        out = self._bmm(self._swiglu(h), self.down_proj, block_expert).view(-1, hidden)
        return out[slot] * weight[:, None]

    def grouped(self, x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return grouped_experts(x, expert, weight, self.gate_up_proj, self.down_proj, self.hidden_act)  # eager

    def forward(self, x, expert, weight, dispatch: str) -> torch.Tensor:
        return getattr(self, dispatch)(x, expert, weight)


def grouped_experts(x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor,
                    down: torch.Tensor, hidden_act: str) -> torch.Tensor:
    """``ZayaExperts.grouped``: a loop over the experts that received tokens (data-dependent, so an opaque
    operator for torch.compile). gate_up [E, 2I, H], down [E, H, I]."""
    act = activation(hidden_act)
    out = torch.zeros_like(x)
    for e in torch.unique(expert).tolist():
        idx = torch.nonzero(expert == e)[:, 0]
        gate, up = linear(x[idx], gate_up[e]).chunk(2, dim=-1)
        out[idx] = linear(act(gate) * up, down[e]) * weight[idx, None]
    return out


# the same function as an operator that torch.compile calls as it is
torch.library.custom_op("zaya1::grouped_experts", grouped_experts, mutates_args=()).register_fake(
    lambda x, expert, weight, gate_up, down, hidden_act: torch.empty_like(x))


class ZayaMoE(nn.Module):
    def __init__(self, config: ZayaConfig, use_eda: bool, intermediate: int):
        super().__init__()
        self.skip_scaled_input = config.skip_expert_output == "scaled_input"
        self.router = ZayaRouter(config, use_eda)
        self.experts = ZayaExperts(config, intermediate)

    def forward(self, u: torch.Tensor, prev_state: torch.Tensor | None, dispatch: str):
        """u [B, S, H] -> (partial expert output [B, S, H] (sum over ranks), skip term [B, S, H] or None,
        router state [B, S, R]). The skip term is added once, after the all-reduce."""
        choice, weight, state = self.router(u, prev_state)
        skip = choice == self.router.num_experts
        flat = u.reshape(-1, u.shape[-1])
        out = self.experts(flat, choice.clamp_max(self.router.num_experts - 1).reshape(-1),
                           torch.where(skip, torch.zeros_like(weight), weight).reshape(-1), dispatch)
        skip_term = None
        if self.skip_scaled_input:
            skip_term = torch.where(skip, weight, torch.zeros_like(weight))[..., None] * u
        return out.view_as(u), skip_term, state
