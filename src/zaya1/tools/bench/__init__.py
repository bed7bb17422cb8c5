"""``zaya1 bench``: zaya1 against upstream ``transformers.ZayaForCausalLM`` on the same weights, in one run.

Both implementations load the same checkpoint directory (``--model DIR``, or ``--synthetic``: a ZAYA1 with the
real widths, ``--layers`` hybrid layers and random weights, written once as an HF-layout checkpoint) in the
same dtype and generate from the same random prompts. Measurements alternate between the implementations,
so both see the same machine state (this matters on shared machines), and every figure is the median of
``--repeats`` timed runs after a warm-up run.

Figures: TTFT (prefill + first token) per prompt length and decode tokens/s at each batch size, each set
against this machine's floor first (``measure_bandwidth``: the weight bytes a decode step must read,
``decode_bytes``, at the read bandwidth measured at start-up and between the runs; for TTFT also the
matmul FLOPs at the measured GEMM rate) and against transformers second; peak RSS above the pre-run level
(device memory on cuda), KV/state bytes per cached token and per sequence.

Output: a table on stdout and, with ``--json FILE``, a list of records ``{metric, batch, prompt_len, unit,
backend, floor, zaya1, zaya1_of_floor, hf, hf_of_floor, ratio, speedup}`` with ratio = zaya1 / hf.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ... import kernels
from ...checkpoint import DTYPES
from ...config import ZayaConfig
from .measure import Bandwidth, describe_machine, load_average, measure_matmul_peak
from .report import Table, jobs, report
from .runners import (HFRunner, NeuronRunner, Runner, ZayaRunner, neuron_available, routing_summary,
                      upstream_transformers)
from .synthetic import synthetic_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint directory (either layout); default: --synthetic")
    src.add_argument("--synthetic", action="store_true",
                     help="random ZAYA1 with the real widths (hidden 2048, 8/2 heads of 128, 16 experts of 2048, "
                          "router 256, vocab 262272), written as an HF-layout checkpoint (the default)")
    p.add_argument("--layers", type=int, default=2, help="hybrid layers of the synthetic model (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and of the prompts")
    p.add_argument("--synthetic-dir", help="keep the synthetic checkpoint here and reuse it on later runs")
    p.add_argument("--backends", default="auto",
                   help="comma-separated cpu,cuda,neuron; auto = cpu, cuda when available, neuron when installed")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="weights/activations of both models")
    p.add_argument("--prompt-lens", default="128", help="comma-separated prompt lengths for TTFT (default 128); "
                                                        "decode runs at the first")
    p.add_argument("--batches", default="1,4,8", help="decode batch sizes (default 1,4,8)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per decode run (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure, median reported (default 3)")
    p.add_argument("--compile", choices=("off", "on", "both"), default="both",
                   help="zaya1 decode step: eager (off), torch.compile'd (on), or both side by side (default)")
    p.add_argument("--exact-kernels", action="store_true",
                   help="zaya1 with F.linear (bit-identical to transformers' eager attention and experts, not its "
                        "sdpa / grouped_mm defaults) instead of the fast bf16 CPU kernels")
    p.add_argument("--no-hf", action="store_true", help="zaya1 only (no transformers comparison)")
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"),
                   help="transformers attention implementation (default sdpa, its default and fastest on CPU)")
    p.add_argument("--hf-experts", default=None,
                   help="transformers experts implementation (default: its own default, grouped_mm)")
    p.add_argument("--neuron-compiled", help="neuron backend: directory written by scripts/compile.py")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--bandwidth-mb", type=int, default=1024, help="size of the bandwidth-test copy (default 1024)")
    p.add_argument("--quick", action="store_true",
                   help="short run: batches 1,4, 8 new tokens, 2 repeats")
    p.add_argument("--json", help="write the records (a JSON list) to this file")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _backends(spec: str) -> tuple[list[str], list[str]]:
    """(backends to run, lines saying what is skipped and why)."""
    wanted = ["cpu", "cuda", "neuron"] if spec == "auto" else [b.strip() for b in spec.split(",") if b.strip()]
    run, skipped = [], []
    for b in wanted:
        if b == "cpu":
            run.append(b)
        elif b == "cuda":
            if torch.cuda.is_available():
                run.append(b)
            elif spec != "auto":
                skipped.append("cuda: skipped: torch.cuda.is_available() is False")
        elif b == "neuron":
            reason = neuron_available()
            (skipped.append(f"neuron: skipped: {reason}") if reason else run.append(b))
        else:
            raise SystemExit(f"zaya1 bench: unknown backend {b!r} (use cpu, cuda, neuron)")
    return run, skipped


def run(args) -> int:
    """The benchmark; zaya1 runs with its defaults (the kernels this CPU's features select), or with F.linear
    everywhere under --exact-kernels (the previous choice is restored after)."""
    with kernels.exact_kernels(args.exact_kernels or kernels.EXACT):
        return _run(args)


def _run(args) -> int:
    if not args.no_hf:
        upstream_transformers()  # fails fast, before anything is measured or written
    if args.quick:
        args.batches, args.new_tokens, args.repeats = ("1,4" if args.batches == "1,4,8" else args.batches,
                                                       min(args.new_tokens, 8), min(args.repeats, 2))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    prompt_lens, batches = _ints(args.prompt_lens), _ints(args.batches)
    backends, skipped = _backends(args.backends)
    for line in skipped:
        print(line)
    print(describe_machine())

    keep = None
    if args.model:
        path = Path(args.model)
    else:
        start = time.perf_counter()
        path, keep = synthetic_checkpoint(args.synthetic_dir, args.layers, args.seed)
        print(f"model: synthetic ZAYA1, real widths, {args.layers} layers, seed {args.seed}, {args.dtype} "
              f"({path}, ready in {time.perf_counter() - start:.1f} s)")
    cfg = ZayaConfig.from_pretrained(path)
    tables = []
    try:
        for backend in backends:
            if backend == "neuron" and not args.neuron_compiled:
                print("neuron: skipped: pass --neuron-compiled DIR (written by scripts/compile.py)")
                continue
            tables.append(_bench_backend(args, backend, path, cfg, dtype, prompt_lens, batches))
    finally:
        if keep is not None:
            keep.cleanup()
    records = [r for t in tables for r in t.records]
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
        print(f"wrote {len(records)} records to {args.json}")
    return 0


def _bench_backend(args, backend, path, cfg, dtype, prompt_lens, batches) -> Table:
    from tqdm.auto import tqdm

    device = "cuda" if backend == "cuda" else "cpu"
    load = load_average()
    if load is not None:
        busy = " (other processes are using the CPU: expect noisy timings)" if load > 0.5 else ""
        print(f"\n[{backend}] 1-minute load average before the run: {load:.2f}{busy}")
    bw = Bandwidth(args.bandwidth_mb << 20, device=device).measure()
    gflops = measure_matmul_peak(device=device, dtypes=tuple({torch.float32, dtype}))
    print(f"[{backend}] memory bandwidth ({args.bandwidth_mb} MB tensor): copy {bw.copy_gbs:.1f} GB/s (read + write, "
          f"median of 5), read {bw.read_gbs:.1f} GB/s (best of 5; sampled again between the runs); GEMM peak "
          f"(2048^3, fp32 or {args.dtype}, the faster) {gflops:.0f} GFLOP/s")

    runners: dict[str, Runner] = {}
    if backend == "neuron":
        runners["zaya1"] = NeuronRunner(args.neuron_compiled, path)
    else:
        from ...model import ZayaForCausalLM

        model = ZayaForCausalLM.from_pretrained(path, dtype=dtype, device=device)
        print(f"[{backend}] zaya1's default decode for this model: "
              f"{'compiled layers ([compile] below)' if model.decode_compiled(device) else 'eager'}")
        for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
            runner = ZayaRunner(model, device, compiled)
            runners[runner.name] = runner
        print(f"[{backend}] routing of a {prompt_lens[0]}-token prompt (zaya1's router): "
              + "; ".join(routing_summary(model, prompt_lens[0], cfg.vocab_size, args.seed)))
    hf = None
    if not args.no_hf and backend != "neuron":
        hf = HFRunner(path, dtype, device, args.hf_attn, args.hf_experts)
        print(f"[{backend}] transformers {hf.version}: ZayaForCausalLM, "
              f"attn_implementation={hf.attn}, experts_implementation={hf.experts}, {args.dtype}, its own "
              f"generate() and DynamicCache")
    impls = list(runners.items()) + ([("hf", hf)] if hf else [])

    gen = torch.Generator().manual_seed(args.seed + 1)
    timed = jobs(prompt_lens, batches)
    results: dict = {}
    total = len(timed) * (args.repeats + 1) * len(impls)
    with tqdm(total=total, desc=f"{backend} bench", unit="run", leave=False) as bar:
        for batch, prompt_len in timed:
            ids = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen)
            new = args.new_tokens if (batch in batches and prompt_len == prompt_lens[0]) else 2
            for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
                for name, runner in impls:
                    bar.set_postfix_str(f"{name} b={batch} p={prompt_len}")
                    result = runner.generate_timed(ids, new)
                    if rep:
                        results.setdefault((name, batch, prompt_len), []).append(result)
                    bar.update()
                bw.sample()  # the ceiling under the load the runs saw
    loads = (load, load_average())
    if load is not None:
        print(f"[{backend}] 1-minute load average after the run: {loads[1]:.2f}")
    return report(args, backend, cfg, dtype, bw, gflops, loads, runners, hf, results, prompt_lens, batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zaya1 bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))

