#!/usr/bin/env python
r"""``zaya1 compile`` (also ``python scripts/compile.py``): trace and compile ZAYA1 for Trainium2 ahead of time.

    zaya1 compile --model-path /ckpt/ZAYA1-8B --compiled-model-path /ckpts/zaya1-tp4 \
        --tp-degree 4 --batch-size 4 --max-context-length 512 --seq-len 4096 --buckets 128,256,512

Prints the sharding plan (per-rank shapes and bytes), buckets and progress; writes the artifacts into a
temporary sibling directory and moves it into place only when the compile has finished, with a manifest
(zaya1-artifacts.json, written last) that ``NeuronZayaForCausalLM.load`` checks: artifacts made for another
tp degree, batch, length, dtype, checkpoint or SDK version are refused. A lock keeps two compiles out of one
directory. ``--dry-run`` validates the settings and prints the plan without the Neuron SDK.

Context-encoding buckets above 512 (the largest known to compile) draw a warning: neuronx-cc crashed
(NCC_ITEN404) on buckets >= 1024 in the compiles reported so far (docs/trainium.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..config import ZayaConfig
from .artifacts import EXPERT_DTYPES, ArtifactManifest, atomic_output_dir, expert_dtype_flag, graph_expert_dtype
from ..checkpoint import resolve_dtype
from ..errors import ConfigError, run_reporting_errors
from ..sharding import check_tp
from ..simulated_tp import describe_plan

TRN2_LOGICAL_CORE_HBM = 24 * 1024 ** 3  # a Trainium2 chip's 96 GiB over its 4 logical cores at LNC 2 (trn2.3xlarge,
# and each of trn2.48xlarge's 16 chips), before runtime overhead (Neuron docs: Trainium2 architecture)
KNOWN_GOOD_CONTEXT_BUCKET = 512  # neuronx-cc crashed (NCC_ITEN404) on context buckets >= 1024 (docs/trainium.md)


def _ints(text: str | None, flag: str = "--buckets") -> list[int]:
    try:
        values = [int(x) for x in text.split(",")] if text else []
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated positive integers, e.g. 256,512,1024.") from None
    if any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text!r} must be comma-separated positive integers, e.g. 256,512,1024.")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="zaya1 compile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="checkpoint directory (either layout)")
    p.add_argument("--compiled-model-path", required=True, help="where the compiled artifacts go")
    p.add_argument("--tp-degree", type=int, default=4, help="1, 2, 4 or 8 (trn2.3xlarge at LNC=2: 4 cores)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-context-length", type=int, default=KNOWN_GOOD_CONTEXT_BUCKET,
                   help=f"longest prompt (default {KNOWN_GOOD_CONTEXT_BUCKET}: context buckets above it are not "
                        f"known to compile)")
    p.add_argument("--seq-len", type=int, default=2048, help="prompt + generated tokens")
    p.add_argument("--buckets", help="context-encoding buckets, e.g. 128,256,512 (default: one bucket of "
                                     "--max-context-length)")
    p.add_argument("--token-generation-buckets", help="KV-length buckets for token generation")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--on-device-sampling", choices=("greedy", "sample"),
                   help="pick tokens on device (no logits on host): greedy (argmax) or sample (per-request "
                        "temperature / top-p / top-k, top_k <= NxDI's global_topk of 256)")
    p.add_argument("--skip-layout-optimization", action="append", default=[], metavar="REGEX",
                   help="weights the compiler's weight-layout optimisation leaves as they are (regex on the "
                        r"traced names, repeatable), e.g. 'model\.layers\.\d+\.mlp\.experts\..*'")
    p.add_argument("--continuous-batching", action="store_true", help="for vLLM: prefill one sequence at a time")
    p.add_argument("--no-save-sharded", action="store_true", help="shard weights at load time instead")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; no Neuron SDK needed")
    p.add_argument("--expert-dtype", choices=EXPERT_DTYPES, default="model",
                   help="experts in --dtype (default; a checkpoint of fp8 experts keeps them) or fp8 e4m3 with "
                        "row scales, quantized from the dense checkpoint as compressed-tensors does (half the "
                        "expert bytes each decode step reads)")
    return p.parse_args(argv)


def plan(args) -> tuple[ZayaConfig, ArtifactManifest | None]:
    zaya = ZayaConfig.from_pretrained(args.model_path)
    check_tp(zaya, args.tp_degree)
    if args.seq_len > zaya.max_position_embeddings:
        raise ConfigError(f"--seq-len {args.seq_len} exceeds max_position_embeddings={zaya.max_position_embeddings} "
                          f"of {args.model_path}/config.json; lower --seq-len.")
    planned = zaya.with_expert_dtype(expert_dtype_flag(args.expert_dtype), args.model_path)
    experts = graph_expert_dtype(planned, args.model_path)  # before the plan: a format NxDI cannot compile
    print(f"ZAYA1 {zaya.layout} layout: {zaya.num_hidden_layers} layers, hidden {zaya.hidden_size}, "
          f"{zaya.num_attention_heads} q / {zaya.num_key_value_heads} KV heads of {zaya.head_dim}, "
          f"{zaya.num_experts} experts x {zaya.moe_intermediate_size}, vocab {zaya.vocab_size}, experts "
          f"{planned.expert_quantization or args.dtype}")
    for line in describe_plan(planned, args.tp_degree, args.batch_size, args.seq_len, resolve_dtype(args.dtype),
                              memory_per_rank=TRN2_LOGICAL_CORE_HBM):
        print("  " + line)
    if args.dry_run and not any(Path(args.model_path).glob("*.safetensors")):
        print("  config.json only: weights not fingerprinted")
        return zaya, None
    manifest = ArtifactManifest.for_checkpoint(
        args.model_path, tp_degree=args.tp_degree, batch_size=args.batch_size, seq_len=args.seq_len,
        max_context_length=args.max_context_length, buckets=_ints(args.buckets), dtype=args.dtype,
        on_device_sampling=args.on_device_sampling is not None, expert_dtype=experts,
        token_generation_buckets=_ints(args.token_generation_buckets, "--token-generation-buckets"))
    print(f"  context-encoding buckets {manifest.buckets}, token-generation buckets "
          f"{manifest.token_generation_buckets}, batch {args.batch_size}, dtype {manifest.dtype}, experts "
          f"{manifest.expert_dtype}, "
          f"on-device sampling {args.on_device_sampling or 'off'}")
    risky = [b for b in manifest.buckets if b > KNOWN_GOOD_CONTEXT_BUCKET]
    if risky:
        print(f"zaya1 compile: warning: context-encoding bucket(s) {risky} exceed {KNOWN_GOOD_CONTEXT_BUCKET}, the "
              f"largest known to compile (neuronx-cc crashed with NCC_ITEN404 on buckets >= 1024, docs/trainium.md); "
              f"use --buckets 128,256,512 --max-context-length 512 unless you are testing that", file=sys.stderr)
    return zaya, manifest


def neuron_config(args):
    from zaya1.neuron import OnDeviceSamplingConfig, ZayaNeuronConfig

    ctx_buckets, tkg_buckets = _ints(args.buckets), _ints(args.token_generation_buckets, "--token-generation-buckets")
    return ZayaNeuronConfig(
        tp_degree=args.tp_degree, batch_size=args.batch_size, max_context_length=args.max_context_length,
        seq_len=args.seq_len, torch_dtype=resolve_dtype(args.dtype), padding_side="right",
        enable_bucketing=bool(ctx_buckets or tkg_buckets),
        context_encoding_buckets=ctx_buckets or ([args.max_context_length] if tkg_buckets else None),
        token_generation_buckets=tkg_buckets or None, is_continuous_batching=args.continuous_batching,
        ctx_batch_size=1 if args.continuous_batching else args.batch_size,
        on_device_sampling_config=None if args.on_device_sampling is None else OnDeviceSamplingConfig(
            do_sample=args.on_device_sampling == "sample", dynamic=True),
        weights_to_skip_layout_optimization=args.skip_layout_optimization,
        save_sharded_checkpoint=not args.no_save_sharded)


def compile_model(args) -> int:
    _, manifest = plan(args)
    if args.dry_run:
        print("dry run: settings valid, nothing compiled")
        return 0
    from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig

    config = ZayaInferenceConfig.from_checkpoint(args.model_path, neuron_config(args),
                                                 expert_dtype=expert_dtype_flag(args.expert_dtype))
    start = time.perf_counter()
    with atomic_output_dir(args.compiled_model_path, manifest) as tmp:
        print(f"compiling into {tmp} (moved to {args.compiled_model_path} when complete) ...", flush=True)
        model = NeuronZayaForCausalLM(args.model_path, config)
        model.compile(str(tmp).rstrip("/") + "/")
    print(f"compiled in {time.perf_counter() - start:.0f} s -> {args.compiled_model_path}")
    return 0


def main(argv=None) -> int:
    torch.set_grad_enabled(False)
    return run_reporting_errors("zaya1 compile", compile_model, parse_args(argv))

