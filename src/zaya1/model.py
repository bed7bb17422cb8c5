"""ZAYA1 in plain PyTorch: the modules every backend shares, a static decode state, and the two step
functions (prefill, decode) that NxDI traces.

Numerics follow upstream transformers (architecture doc section 3): bf16 (model dtype) blocks, an fp32
residual stream that is rounded to the model dtype before each RMSNorm, learned residual scaling, fp32
logits. Shapes: B batch, S tokens in the step, T cache length, H hidden, V vocab.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cca import CCAttention, gather_state, rope_cos_sin
from .checkpoint import load_model
from .config import SLIDING, ZayaConfig
from .generation import check_token_ids, generate
from .hf_export import save_pretrained
from .kernels import Linear, cached_choice, linear
from .moe import RMSNorm, ZayaMoE
from .sharding import AttentionShard, LocalComm, cca_state_shapes, padded_vocab


# parameters here that transformers holds as buffers (or does not have): not counted by num_parameters
NOT_WEIGHTS = ("balancing_biases", "value_delayed", "embed_tokens.rank")
COMPILE_MIN_LAYERS = 8  # default compiled decode on CPU from this depth (docs/performance.md: where it pays)


class ResidualScale(nn.Module):
    """merge(y, r) = (y + b_y) * s_y + (r + b_r) * s_r: y in the model dtype, r (and the sum) in fp32."""

    def __init__(self, hidden: int, with_residual: bool = True):
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.empty(hidden))
        self.hidden_states_bias = nn.Parameter(torch.empty(hidden))
        if with_residual:
            self.residual_scale = nn.Parameter(torch.empty(hidden))
            self.residual_bias = nn.Parameter(torch.empty(hidden))

    def forward(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = (y + self.hidden_states_bias) * self.hidden_states_scale.to(y.dtype)  # NxDI keeps "*scale" fp32
        if residual is None:  # the embedding: no residual yet
            return y.to(torch.float32)
        return y + (residual + self.residual_bias) * self.residual_scale


class VocabParallelEmbedding(nn.Module):
    """Embedding split by vocabulary over ranks (whole table when tp == 1). ``rank`` is a per-rank tensor
    (NxD's SPMDRank convention) so that the offset survives SPMD tracing."""

    def __init__(self, vocab_local: int, hidden: int, comm):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(torch.empty(vocab_local, hidden))
        if comm.world_size > 1:
            self.rank = nn.Parameter(torch.zeros(1, dtype=torch.int32), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.comm.world_size == 1:
            return F.embedding(ids, self.weight)
        rows = self.weight.shape[0]
        local = ids - self.rank * rows
        inside = (local >= 0) & (local < rows)
        out = F.embedding(local.clamp(0, rows - 1), self.weight) * inside[..., None].to(self.weight.dtype)
        return self.comm.all_reduce(out)


class ZayaDecoderLayer(nn.Module):
    """Attention block then MoE block, each merged into the fp32 residual with learned scaling."""

    def __init__(self, config: ZayaConfig, idx: int, shard: AttentionShard, comm):
        super().__init__()
        self.comm = comm
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = CCAttention(config, idx, shard)
        self.post_attention_residual_scale = ResidualScale(config.hidden_size)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = ZayaMoE(config, use_eda=idx > 0, intermediate=config.moe_intermediate_size // comm.world_size)
        self.post_mlp_residual_scale = ResidualScale(config.hidden_size)

    def forward(self, residual, router_state, cos, sin, positions, token_mask, conv_state, value_state,
                past=None, dispatch="blockwise"):
        dtype = self.input_layernorm.weight.dtype
        attn, k, v, packed, v_all = self.self_attn(self.input_layernorm(residual.to(dtype)), cos, sin, positions,
                                                   token_mask, conv_state, value_state, past)
        residual = self.post_attention_residual_scale(self.comm.all_reduce(attn), residual)
        y, skip_term, router_state = self.mlp(self.post_attention_layernorm(residual.to(dtype)), router_state,
                                              dispatch)
        y = self.comm.all_reduce(y)
        if skip_term is not None:
            y = y + skip_term
        return self.post_mlp_residual_scale(y, residual), router_state, (k, v, packed, v_all)


def layer_step(layer, residual, router_state, cos, sin, positions, token_mask, conv_state, value_state, past,
               dispatch, lengths):
    """One decoder layer and the state it leaves: (residual, router state, key, value, conv, value_prev)."""
    residual, router_state, (k, v, packed, v_all) = layer(residual, router_state, cos, sin, positions, token_mask,
                                                          conv_state, value_state, past, dispatch)
    conv, value_prev = gather_state(packed, v_all, lengths, conv_state.shape[-1])
    return residual, router_state, k, v, conv, value_prev


@functools.cache
def compiled_layer_step():
    """``layer_step`` through torch.compile, made at first use (importing torch's compiler takes seconds). One
    graph serves every layer (the parameters are graph inputs): compile time does not grow with depth. The
    measured kernel choices are constants of the graph."""
    torch.compiler.assume_constant_result(cached_choice)
    return torch.compile(layer_step)


@dataclass
class LayerStep:
    """What one layer hands back from a step: new K/V [B, nkv, S, d] and the state after the last real
    token: conv [B, C, K-1], value [B, Cv]."""

    key: torch.Tensor
    value: torch.Tensor
    conv: torch.Tensor
    value_prev: torch.Tensor


class ZayaModel(nn.Module):
    """Embedding, decoder layers, final norm. ``forward`` runs one chunk of tokens for every layer."""

    def __init__(self, config: ZayaConfig, comm=None):
        super().__init__()
        comm = comm or LocalComm()
        self.config, self.comm = config, comm
        self.shard = AttentionShard.for_tp(config, comm.world_size)
        self.embed_tokens = VocabParallelEmbedding(padded_vocab(config, comm.world_size) // comm.world_size,
                                                   config.hidden_size, comm)
        self.input_scale = ResidualScale(config.hidden_size, with_residual=False)
        self.layers = nn.ModuleList(ZayaDecoderLayer(config, i, self.shard, comm)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def rope(self, positions: torch.Tensor) -> dict:
        cfg = self.config
        thetas = {"full": cfg.rope_theta, SLIDING: cfg.rope_theta_sliding}
        return {kind: rope_cos_sin(positions, thetas[kind], cfg.rotary_dims[kind], self.dtype)
                for kind in sorted(set(cfg.layer_types))}

    def zero_states(self, batch: int, device=None) -> list:
        """(conv_state [B, C, K-1], value_state [B, Cv]) per layer for sequences that start now."""
        cfg, ref = self.config, self.embed_tokens.weight
        conv_shape, value_shape = cca_state_shapes(cfg, self.comm.world_size)
        conv = ref.new_zeros(batch, *conv_shape, device=device)
        value = ref.new_zeros(batch, *value_shape, device=device)
        return [(conv, value)] * cfg.num_hidden_layers

    def forward(self, input_ids, positions, token_mask, lengths, states, past=None, dispatch="blockwise",
                run=None):
        """input_ids/positions [B, S], token_mask [B, S] bool, lengths [B] (index after the last real token),
        states: per layer (conv_state, value_state) before the chunk; past: per layer (k, v, k_pos, k_valid)
        or None. ``run``: what runs each layer (``layer_step``, or ``compiled_layer_step()`` for a compiled decode).
        Returns the final-normed hidden states [B, S, H] and a LayerStep per layer."""
        residual = self.input_scale(self.embed_tokens(input_ids))
        rope = self.rope(positions)
        router_state, steps, run = None, [], run or layer_step
        for i, layer in enumerate(self.layers):
            cos, sin = rope[self.config.layer_types[i]]
            residual, router_state, *step = run(layer, residual, router_state, cos, sin, positions, token_mask,
                                                *states[i], past[i] if past is not None else None, dispatch, lengths)
            steps.append(LayerStep(*step))
        return self.norm(residual.to(self.dtype)), steps

    # The two step functions every backend traces. They return new K/V and state; where it is stored is the
    # caller's business (ZayaState on CPU/GPU, NxDI's KV cache manager and aliased buffers on Neuron).
    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, dispatch: str = "blockwise"):
        """Context encoding of right-padded input_ids [B, S] with lengths [B] real tokens, from empty state.
        Returns the hidden state of each sequence's last real token [B, H] and the LayerSteps (K/V for all
        S positions, state after the last real token)."""
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        hidden, steps = self(input_ids, positions, positions < lengths[:, None], lengths,
                             self.zero_states(batch, input_ids.device), dispatch=dispatch)
        last = (lengths - 1).clamp_min(0).to(torch.long)
        return hidden[torch.arange(batch, device=hidden.device), last], steps

    def decode(self, input_ids: torch.Tensor, positions: torch.Tensor, past_kv: list, states: list,
               compiled: bool = False):
        """Token generation: input_ids [B, 1] at positions [B]; past_kv per layer (k, v) [B, nkv, T, d] valid
        below each position; states per layer (conv, value) of the same rows. ``compiled``: each layer runs
        through torch.compile (one graph for every layer and kv_len). Returns hidden [B, H], steps."""
        batch, kv_len = input_ids.shape[0], past_kv[0][0].shape[2]
        k_pos = torch.arange(kv_len, device=input_ids.device).expand(batch, kv_len)
        k_valid = k_pos < positions[:, None]
        ones = torch.ones(batch, dtype=torch.long, device=input_ids.device)
        past = [(k, v, k_pos, k_valid) for k, v in past_kv]
        if compiled:
            for tensors in past:  # the cache length varies (kv_len buckets): dynamic from the first graph
                for t in tensors:
                    torch._dynamo.maybe_mark_dynamic(t, t.dim() - 2 if t.dim() == 4 else 1)
        hidden, steps = self(input_ids, positions[:, None], torch.ones_like(input_ids, dtype=torch.bool), ones,
                             states, past, dispatch="gather", run=compiled_layer_step() if compiled else None)
        return hidden[:, 0], steps


class ZayaState(nn.Module):
    """Preallocated decode state of ``max_batch`` sequences (cache rows) of up to ``max_seq`` tokens.
    Per layer: K/V [max_batch, nkv, max_seq, d], conv state [max_batch, C, K-1] (the last packed q/k
    projection columns), value state [max_batch, Cv] (the last token's value projections)."""

    def __init__(self, model: ZayaModel, max_batch: int, max_seq: int):
        super().__init__()
        cfg, shard = model.config, model.shard
        ref = model.embed_tokens.weight
        layers, d = cfg.num_hidden_layers, cfg.head_dim
        self.max_batch, self.max_seq = max_batch, max_seq
        kv_shape = (layers, max_batch, shard.kv_heads, max_seq, d)
        self.register_buffer("keys", ref.new_zeros(kv_shape), persistent=False)
        self.register_buffer("values", ref.new_zeros(kv_shape), persistent=False)
        conv_shape, value_shape = cca_state_shapes(cfg, model.comm.world_size)
        self.register_buffer("conv", ref.new_zeros(layers, max_batch, *conv_shape), persistent=False)
        self.register_buffer("value_prev", ref.new_zeros(layers, max_batch, *value_shape), persistent=False)

    def nbytes_per_token(self) -> int:
        return 2 * self.keys[:, 0, :, 0].numel() * self.keys.element_size()

    def nbytes_per_sequence(self) -> int:
        return (self.conv[:, 0].numel() + self.value_prev[:, 0].numel()) * self.conv.element_size()


@dataclass
class ZayaOutput:
    logits: torch.Tensor


class ZayaForCausalLM(nn.Module):
    """ZAYA1 causal LM. ``forward`` is a full-sequence forward; ``prefill`` / ``decode`` are the static-shape
    step functions over a ``ZayaState``; ``generate`` mirrors transformers' generate."""

    def __init__(self, config: ZayaConfig, comm=None):
        super().__init__()
        self.config = config
        self.model = ZayaModel(config, comm)
        self.comm = self.model.comm
        # the lm_head is the (vocab-split) embedding when tied; logits of padded vocab rows are dropped
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.hidden_size, self.model.embed_tokens.weight.shape[0], bias=False)
        self.dispatch = "grouped"  # eager prefill dispatch; tracing/export uses "blockwise"
        self._compile = None  # compile_decode's setting; None: auto (COMPILE_MIN_LAYERS)

    # ------------------------------------------------------------------ loading
    @classmethod
    def empty(cls, config: ZayaConfig, comm=None, dtype: torch.dtype = torch.float32, device="cpu"):
        """Uninitialised weights, allocated once in ``dtype`` on ``device`` (to be loaded into)."""
        with torch.device("meta"):
            model = cls(config, comm).to(dtype)
        return model.to_empty(device=device)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str = torch.float32, device="cpu",
                        check_finite: bool = False, torch_dtype=None, expert_dtype: str | None = None,
                        **config_overrides):
        """Load a checkpoint directory of either layout. ``dtype="auto"`` takes the dtype config.json declares
        (``torch_dtype`` is transformers 4's name for ``dtype``); ``check_finite=True`` refuses a tensor holding
        NaN or inf (CheckpointError naming it); the generation defaults of
        generation_config.json become ``model.generation_config``. ``expert_dtype="fp8"`` keeps the experts of
        a dense checkpoint as fp8 codes with row scales, quantized while loading as compressed-tensors
        quantizes them (zaya1.quantization; half the memory, dequantized per use). As simulated tensor-parallel ranks:
        ``zaya1.simulated_tp.from_pretrained(path, tp_degree)``."""
        if torch_dtype is not None:
            dtype = torch_dtype
        return load_model(cls, path, dtype=dtype, device=device, check_finite=check_finite, expert_dtype=expert_dtype,
                          **config_overrides)

    def save_pretrained(self, directory: str | Path, tokenizer_from: str | Path | None = None) -> Path:
        """Write this model as a Hugging Face-layout checkpoint (config.json, model.safetensors in the model's
        dtype, generation_config.json when it has generation settings): the one-step conversion of an
        original-layout checkpoint for transformers, vLLM and other tools. The directory appears only when
        complete. Fields the HF layout lacks (an original-layout router eps / skip expert) are kept under
        zaya1's names, with a warning that transformers ignores them. Quantized experts are written as held,
        in the compressed-tensors format; ``tokenizer_from`` copies a checkpoint's tokenizer files along. See
        zaya1.hf_export."""
        return save_pretrained(self, directory, tokenizer_from)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """transformers' count on its ZayaForCausalLM: every weight once (a tied lm_head is the embedding), not
        the router's balancing biases (buffers there); ``exclude_embeddings`` leaves out the input embedding
        (an untied lm_head still counts); ``only_trainable`` counts weights with requires_grad."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if not name.endswith(NOT_WEIGHTS) and (p.requires_grad or not only_trainable)
                   and not (exclude_embeddings and name == "model.embed_tokens.weight"))

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    # ------------------------------------------------------------------ pieces
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = self.comm.all_gather(linear(hidden, weight), dim=-1)
        return logits[..., :self.config.vocab_size].to(torch.float32)

    def new_state(self, max_batch: int, max_seq: int) -> ZayaState:
        return ZayaState(self.model, max_batch, max_seq).to(self.device)

    # ------------------------------------------------------------------ full-sequence forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> ZayaOutput:
        """input_ids [B, S] -> logits [B, S, V] (fp32). attention_mask [B, S] (1 = token, 0 = padding, left or
        right): padding is zeroed before the convolutions and never attended. Positions default to 0..S-1
        (as transformers does without position_ids)."""
        check_token_ids(input_ids, self.config.vocab_size, attention_mask=attention_mask)
        batch, seq = input_ids.shape
        token_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                      else attention_mask.to(torch.bool))
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        lengths = torch.full((batch,), seq, device=input_ids.device)
        hidden, _ = self.model(input_ids, position_ids, token_mask, lengths,
                               self.model.zero_states(batch, input_ids.device), dispatch=self._dispatch())
        return ZayaOutput(self.logits(hidden))

    def _dispatch(self) -> str:
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        return "blockwise" if tracing else self.dispatch

    # ------------------------------------------------------------------ step functions
    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, seq_ids: torch.Tensor,
                state: ZayaState) -> torch.Tensor:
        """Context encoding. input_ids [B, S] right-padded, lengths [B] real tokens, seq_ids [B] cache rows.
        Writes K/V for positions 0..S-1 and each sequence's state after its last real token; returns the
        logits of that token [B, V]."""
        seq = input_ids.shape[1]
        hidden, steps = self.model.prefill(input_ids, lengths, dispatch=self._dispatch())
        for i, step in enumerate(steps):
            state.keys[i, seq_ids, :, :seq] = step.key
            state.values[i, seq_ids, :, :seq] = step.value
            state.conv[i, seq_ids] = step.conv
            state.value_prev[i, seq_ids] = step.value_prev
        return self.logits(hidden)

    def decode(self, input_ids: torch.Tensor, positions: torch.Tensor, seq_ids: torch.Tensor,
               state: ZayaState, kv_len: int | None = None) -> torch.Tensor:
        """Token generation. input_ids [B, 1] at positions [B] into cache rows seq_ids [B]. Attends to the
        first ``kv_len`` cache positions (a static bucket > max(positions); default max_seq) and returns
        logits [B, V]. The step itself runs through torch.compile after ``compile_decode()``."""
        kv_len = kv_len or state.max_seq
        layers = range(self.config.num_hidden_layers)
        past_kv = [(state.keys[i, seq_ids, :, :kv_len], state.values[i, seq_ids, :, :kv_len]) for i in layers]
        states = [(state.conv[i, seq_ids], state.value_prev[i, seq_ids]) for i in layers]
        compiled = self.decode_compiled(input_ids.device)
        logits, steps = self.decode_step(input_ids, positions, past_kv, states, compiled)
        rows = seq_ids[:, None]
        heads = torch.arange(self.model.shard.kv_heads, device=input_ids.device)[None, :]
        for i, (key, value, conv, value_prev) in enumerate(steps):
            state.keys[i, rows, heads, positions[:, None]] = key[:, :, 0]
            state.values[i, rows, heads, positions[:, None]] = value[:, :, 0]
            state.conv[i, seq_ids] = conv
            state.value_prev[i, seq_ids] = value_prev
        return logits

    def decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor, past_kv: list, states: list,
                    compiled: bool = False):
        """The pure decode step: logits [B, V] and per layer the new (key, value [B, nkv, 1, d], conv state,
        value state). ``compiled``: the layers run through torch.compile (``ZayaModel.decode``)."""
        hidden, steps = self.model.decode(input_ids, positions, past_kv, states, compiled)
        return self.logits(hidden), [(s.key, s.value, s.conv, s.value_prev) for s in steps]

    def compile_decode(self, enable: bool | None = True) -> "ZayaForCausalLM":
        """Run the decode step's layers through torch.compile (inductor: the per-layer elementwise work fused,
        one graph for every layer), or eagerly with ``enable=False``; ``None`` restores the default: compiled on
        CPU for models of ``COMPILE_MIN_LAYERS`` layers or more, where the eager step's per-op cost dominates
        (docs/performance.md), unless ``ZAYA1_COMPILE_DECODE=0`` (simulated tensor-parallel ranks, which
        communicate through Python, stay eager). Both compute the same up to bf16 rounding.
        The first step of each batch size compiles (tens of seconds on a 2-core CPU, seconds once inductor's
        on-disk cache holds the graph, whatever the depth); kv_len buckets reuse it."""
        self._compile = enable
        return self

    def decode_compiled(self, device: torch.device | str) -> bool:
        """Whether decode on ``device`` runs its layers compiled (``compile_decode``)."""
        if self._compile is not None:
            return self._compile
        off = os.environ.get("ZAYA1_COMPILE_DECODE", "1").strip().lower() in ("0", "false", "no")
        return (torch.device(device).type == "cpu" and self.config.num_hidden_layers >= COMPILE_MIN_LAYERS
                and self.comm.world_size == 1 and not off)

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Like transformers' generate: returns input_ids followed by the new tokens (see generation.generate)."""
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)
