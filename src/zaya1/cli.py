"""``zaya1`` command line: ``zaya1 generate`` (the main job) and ``zaya1 bench``."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .errors import ZayaError


def run_reporting_errors(prog: str, fn, *args) -> int:
    """fn(*args), with a zaya1 error printed as one line (what, where, how to fix) and exit status 2."""
    try:
        return fn(*args)
    except ZayaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (either layout); omit for the embedded random demo model")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--prompt-ids", help="comma-separated token ids instead of text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16 (cpu/cuda backends)")
    p.add_argument("--device", default="cpu", help="torch device for the cpu/cuda backend, e.g. cuda")
    p.add_argument("--tp-degree", type=int, default=1, help="cpu: run the tensor-parallel shards simulated")
    p.add_argument("--exact-kernels", action="store_true",
                   help="cpu bf16: F.linear and transformers' eager numerics everywhere (bit-identical to it) "
                        "instead of the fast path this CPU's features select")
    p.add_argument("--backend", choices=("torch", "neuron"), default="torch")
    p.add_argument("--compiled", help="neuron backend: directory written by scripts/compile.py")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")


def load_for_generation(args):
    """(model, tokenizer or None when token ids are given and the checkpoint has none, label)."""
    from .generation import Tokenizer

    if args.model is None and args.backend == "torch":
        from .demo import demo_model, demo_tokenizer

        return (demo_model().to(args.device), demo_tokenizer(),
                "DEMO: tiny ZAYA1 with random weights (no --model given); the text is gibberish by design")
    if args.backend == "neuron":
        if not args.compiled:
            raise SystemExit("zaya1: error: --backend neuron needs --compiled DIR (written by scripts/compile.py)")
        from .neuron import NeuronZayaForCausalLM

        model = NeuronZayaForCausalLM.from_compiled(args.compiled, model_path=args.model)
        path, label = model.model_path, f"neuron ({args.compiled})"
    else:
        from . import simulated_tp

        model = simulated_tp.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                             tp_degree=args.tp_degree)
        path, label = args.model, args.model
    try:
        return model, Tokenizer.from_pretrained(path), label
    except FileNotFoundError:
        if args.prompt_ids:
            return model, None, label
        raise


def run_generate(args) -> int:
    if args.exact_kernels:
        from .kernels import use_exact_kernels

        use_exact_kernels()
    model, tokenizer, label = load_for_generation(args)
    if args.prompt_ids:
        rows = [[int(t) for t in args.prompt_ids.split(",")]]
    else:
        rows = [tokenizer.encode(p, chat=args.chat) for p in (args.prompt or ["The capital of France is"])]
    width = max(len(r) for r in rows)
    pad = model.config.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left-padded, like transformers
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    print(f"[{label}]", file=sys.stderr)
    stream = not args.no_stream and len(rows) == 1 and tokenizer is not None
    pieces: list[int] = []

    def streamer(tokens: torch.Tensor) -> None:
        pieces.append(int(tokens[0]))
        text = tokenizer.decode(pieces)
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            print(text, end="", flush=True)
            pieces.clear()

    start = time.perf_counter()
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                         do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, streamer=streamer if stream else None)
    seconds = time.perf_counter() - start
    if stream:
        print(tokenizer.decode(pieces))
    else:
        for row in out[:, width:]:
            print(tokenizer.decode(row.tolist()) if tokenizer else " ".join(map(str, row.tolist())))
    new = out.shape[1] - width
    print(f"[{new} new tokens x {len(rows)} sequence(s) in {seconds:.2f} s]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zaya1", description="ZAYA1 inference")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_arguments(sub.add_parser("generate", help="generate text from a prompt"))
    bench = sub.add_parser("bench", help="benchmark zaya1 against transformers (scripts/benchmark.py)")
    try:
        from . import bench as bench_module

        bench_module.add_arguments(bench)
    except ImportError:
        bench_module = None
    args = parser.parse_args(argv)
    return run_reporting_errors("zaya1", run_generate if args.command == "generate" else bench_module.run, args)


if __name__ == "__main__":
    sys.exit(main())
