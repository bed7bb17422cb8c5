"""ZAYA1 for the native vLLM Neuron plugin (vllm-neuron >= 0.21, Neuron SDK >= 2.34), and a CPU emulation
of the plugin's runner that drives it (docs/vllm-neuron.md).

``ZayaNativeForCausalLM`` is the model the plugin loads (plain torch modules over zaya1's own; nothing here
imports vLLM or a Neuron package until used). ``emulate`` runs checkpoints through it the way the plugin's
runner does, on CPU, before a trn2 is rented.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import InputError
from ..generation import check_token_ids
from ..kernels import neuron_graph_numerics
from .model import ZayaNativeForCausalLM
from .runner import Emulator, Request, Result, load_ranks
from .spec import KVSpec, LayerSpec, RecurrentLayerSpec, min_block_size


def powers_of_two_up_to(limit: int) -> list[int]:
    """The runner's default decode batch buckets: 1, 2, 4, ... and ``limit`` itself."""
    return sorted({2 ** i for i in range(limit.bit_length()) if 2 ** i <= limit} | {limit})


def emulate(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int | list[int], tp_degree: int = 1,
            dtype="auto", block_size: int = 16, prefill_bucket: int = 128, compile: bool = False,
            prefix_cache: bool = False, *, max_num_seqs: int = 4, max_model_len: int = 1024,
            num_blocks: int | None = None, decode_buckets: list[int] | None = None,
            context_buckets: list[int] | None = None, sampling: list[tuple[float, float, float]] | None = None,
            pad_slot: int = 0, compile_backend: str = "aot_eager", config_overrides: dict | None = None,
            teacher_forcing: list[list[int]] | None = None, state_block: int | None = None) -> list[Result]:
    """Serve ``prompts`` (token id lists) from the checkpoint at ``model_dir`` through ZayaNativeForCausalLM
    driven as the plugin's runner drives it (zaya1.vllm_neuron.runner), on CPU.

    Returns per prompt a ``Result``: the generated token ids and the fp32 logits [n, V] of each step.
    ``max_new_tokens``: one for all or one per prompt (requests finish at different steps). ``tp_degree``:
    simulated ranks. ``prefill_bucket``: tokens per prefill step (longer prompts are segmented).
    ``compile``: every forward through ``torch.compile(fullgraph=True, dynamic=False)`` (tp_degree 1), each
    graph warmed up first and then served under ``fail_on_recompile`` as the runner does;
    ``compile_backend``: "aot_eager" (Dynamo and AOTAutograd, the front of TorchNeuron's route; the Neuron
    compiler is the back end there) or "inductor" (CPU code, minutes per graph).
    ``prefix_cache``: vLLM's prefix caching; a prompt sharing full blocks with an earlier one resumes from
    their K/V and CCA state. ``state_block``: tokens per CCA state page with prefix caching (default
    block_size; a multiple k costs 1/k of the state pages, and prefixes are then reused in k-block steps). ``max_num_seqs``: decode rows (more prompts wait for a free row);
    ``decode_buckets`` (default powers of two up to it) and ``context_buckets`` (tokens; default one,
    ``max_model_len``). ``sampling``: per prompt (top_k, top_p, temperature); default greedy.
    ``pad_slot``: the slot padding sentinel, 0 (vLLM 0.24) or -1 (vLLM 0.21). ``config_overrides``: as
    ``ZayaForCausalLM.from_pretrained``'s (e.g. router_norm_eps)."""
    if compile and tp_degree != 1:
        raise InputError("emulate(compile=True) runs tp_degree=1: the simulated ranks' thread collectives "
                         "cannot be traced (the multi-rank graphs are traced in the NxDI CPU stage).")
    lengths = [len(p) for p in prompts]
    new = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if not prompts or min(lengths) < 1 or len(new) != len(prompts) or min(new) < 1:
        raise InputError("emulate: pass at least one non-empty prompt and max_new_tokens >= 1 (one, or one per "
                         "prompt).")
    if max(a + b for a, b in zip(lengths, new)) > max_model_len:
        raise InputError(f"emulate: a prompt plus its new tokens exceeds max_model_len={max_model_len}; raise it.")
    for name, per_prompt in (("sampling", sampling), ("teacher_forcing", teacher_forcing)):
        if per_prompt is not None and len(per_prompt) != len(prompts):
            raise InputError(f"emulate: {name} needs one entry per prompt ({len(prompts)}), got {len(per_prompt)}.")
    models = load_ranks(model_dir, tp_degree, None if dtype == "auto" else dtype, **(config_overrides or {}))
    for prompt in prompts:
        check_token_ids(torch.tensor([prompt]), models[0].config.vocab_size, name="prompt")
    forwards = [torch.compile(m, fullgraph=True, dynamic=False, backend=compile_backend) for m in models] \
        if compile else None
    blocks_per_seq = -(-max_model_len // block_size)
    emulator = Emulator(models, block_size, num_blocks or 2 * (len(prompts) + 1) * blocks_per_seq + 1,
                        prefill_bucket, max_model_len,
                        decode_buckets or powers_of_two_up_to(max_num_seqs),
                        context_buckets, prefix_cache, segmented=max(lengths) > prefill_bucket, pad_slot=pad_slot,
                        compiled=forwards, state_block=state_block)
    greedy = (-1.0, 1.0, 0.0)
    requests = [Request(i, list(p), n, tuple(sampling[i]) if sampling else greedy,
                        list(teacher_forcing[i]) if teacher_forcing else None)
                for i, (p, n) in enumerate(zip(prompts, new))]
    with neuron_graph_numerics() if compile else contextlib.nullcontext():  # the graphs the plugin compiles
        emulator.run(requests, max_num_seqs)
    return [Result(r.chosen, torch.stack(r.logits), r.cached_tokens) for r in requests]


__all__ = ["ZayaNativeForCausalLM", "emulate", "Emulator", "Result", "KVSpec", "LayerSpec", "RecurrentLayerSpec",
           "min_block_size"]
