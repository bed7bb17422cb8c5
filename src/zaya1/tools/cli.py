"""``zaya1`` command line: ``zaya1 generate`` (the main job), ``zaya1 bench``, ``zaya1 cost`` and
``zaya1 compile``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from .. import __version__, simulated_tp
from ..neuron import compile_cli
from . import bench
from ..neuron import cost as cost_module
from ..checkpoint import resolve_device, resolve_dtype
from ..config import QUANTIZE_TO
from ..errors import InputError, run_reporting_errors
from ..generation_config import eos_ids
from ..hf_export import TOKENIZER_FILES
from ..model import ZayaForCausalLM
from ..streaming import TextStreamer
from ..tokenizer import Tokenizer

__all__ = ["main", "run_reporting_errors"]

GENERATE_EXAMPLES = """examples:
  zaya1 generate                                   # the embedded random demo model (no checkpoint needed)
  zaya1 generate --model /ckpt/ZAYA1-8B --chat --prompt "What is the capital of France?"
  zaya1 generate --model /ckpt/ZAYA1-8B --no-special-tokens --prompt "The capital of France is" \\
      --temperature 0
  zaya1 generate --model /ckpt/ZAYA1-8B --prompt-file prompt.txt --do-sample --temperature 0.7 --top-p 0.9
"""


def token_ids(text: str) -> list[int]:
    """--prompt-ids: comma-separated non-negative integers."""
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token ids (e.g. 2,9259,236888)")
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: token ids are integers >= 0")
    return ids


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (either layout); omit for the embedded random demo model")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--prompt-file", action="append", type=Path, help="read a prompt from a file (repeatable)")
    p.add_argument("--prompt-ids", type=token_ids, help="comma-separated token ids instead of text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    p.add_argument("--no-special-tokens", action="store_true",
                   help="encode plain prompts without the tokenizer's special tokens (ZAYA1-8B's tokenizer "
                        "appends its EOS to plain text; a completion prompt should not end in it)")
    # None = the checkpoint's generation_config.json, else transformers' default
    p.add_argument("--max-new-tokens", type=int, help="default: generation_config.json, else 32")
    p.add_argument("--min-new-tokens", type=int)
    p.add_argument("--do-sample", action="store_const", const=True, help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="0 = off")
    p.add_argument("--top-p", type=float, help="1.0 = off")
    p.add_argument("--repetition-penalty", type=float, help="1.0 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16 | auto (cpu/cuda backends)")
    p.add_argument("--device", default="cpu", help="torch device for the cpu/cuda backend, e.g. cuda")
    p.add_argument("--tp-degree", type=int, default=1, help="cpu: run the tensor-parallel shards simulated")
    p.add_argument("--exact-kernels", action="store_true",
                   help="cpu bf16: F.linear and transformers' eager numerics everywhere (bit-identical to transformers "
                        "with attn_implementation='eager' and experts_implementation='eager', not to its sdpa / "
                        "grouped_mm defaults) instead of the fast path this CPU's features select")
    p.add_argument("--backend", choices=("torch", "neuron"), default="torch")
    p.add_argument("--compiled", help="neuron backend: directory written by zaya1 compile")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")


def load_for_generation(args):
    """(model, tokenizer or None when token ids are given and the checkpoint has none, label, is_demo)."""
    if args.model is None and args.backend == "torch":  # honours --dtype / --device / --tp-degree or refuses them
        from .demo import demo_model, demo_tokenizer

        model = demo_model()
        model = model.to(device=resolve_device(args.device), dtype=resolve_dtype(args.dtype, model.config))
        return (simulated_tp.shard(model, args.tp_degree), demo_tokenizer(),
                "DEMO: tiny ZAYA1 with random weights (no --model given), sampling: random characters by design", True)
    if args.backend == "neuron":
        if not args.compiled:
            raise InputError("--backend neuron needs --compiled DIR (written by zaya1 compile)")
        from ..neuron import NeuronZayaForCausalLM

        model = NeuronZayaForCausalLM.from_compiled(args.compiled, model_path=args.model)
        path, label = model.model_path, f"neuron ({args.compiled})"
    else:
        model = simulated_tp.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                             tp_degree=args.tp_degree)
        path, label = args.model, args.model
    try:
        return model, Tokenizer.from_pretrained(path), label, False
    except FileNotFoundError:
        if args.prompt_ids:
            return model, None, label, False
        raise


def prompt_rows(args, tokenizer, eos: list[int]) -> list[list[int]]:
    if args.prompt_ids:
        return [args.prompt_ids]
    texts = list(args.prompt or [])
    for file in args.prompt_file or []:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--prompt-file {file}: cannot be read as UTF-8 text ({exc}).") from None
    rows = []
    for i, text in enumerate(texts or ["The capital of France is"]):
        if not text:
            raise InputError(f"prompt {i} is empty: give some text (--prompt / --prompt-file) or --prompt-ids.")
        ids = tokenizer.encode(text, chat=args.chat, add_special_tokens=not args.no_special_tokens)
        if not ids:
            raise InputError(f"prompt {i} ({text[:40]!r}) encodes to no tokens; give some text.")
        if not args.chat and not args.no_special_tokens and ids[-1] in eos:
            print(f"zaya1: note: the tokenizer ended prompt {i} with EOS token {ids[-1]}; for a completion "
                  f"prompt pass --no-special-tokens (or --chat for an instruction)", file=sys.stderr)
        rows.append(ids)
    return rows


class Timer:
    """A streamer that timestamps the prompt and every step, forwarding to ``inner`` (a TextStreamer)."""

    def __init__(self, inner=None):
        self.inner, self.times = inner, []

    def put(self, tokens: torch.Tensor) -> None:
        self.times.append(time.perf_counter())
        if self.inner is not None:
            self.inner.put(tokens)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


def summary(load_s: float, prompt_tokens: int, new_tokens: int, batch: int, times: list[float]) -> list[str]:
    """llama.cpp-style timings: load, prompt (TTFT), decode tok/s."""
    ttft = times[1] - times[0]
    decode = times[-1] - times[1]
    steps = len(times) - 2
    lines = [f"load time     = {load_s * 1e3:10.2f} ms",
             f"prompt eval   = {ttft * 1e3:10.2f} ms / {prompt_tokens:5d} tokens ({prompt_tokens / ttft:8.2f} tok/s)"
             f"  TTFT {ttft * 1e3:.2f} ms"]
    if steps > 0:
        lines.append(f"decode        = {decode * 1e3:10.2f} ms / {steps * batch:5d} tokens "
                     f"({steps * batch / decode:8.2f} tok/s, {steps} steps x batch {batch})")
    lines.append(f"total         = {(load_s + times[-1] - times[0]) * 1e3:10.2f} ms / {new_tokens:5d} new tokens")
    return lines


def run_generate(args) -> int:
    if args.exact_kernels:
        from ..kernels import use_exact_kernels

        use_exact_kernels()
    start = time.perf_counter()
    model, tokenizer, label, demo = load_for_generation(args)
    load_s = time.perf_counter() - start
    defaults = getattr(model, "generation_config", None)
    eos = eos_ids(defaults.values if defaults else {}, model.config.eos_token_id)
    rows = prompt_rows(args, tokenizer, eos)
    width = max(len(r) for r in rows)
    pad = model.config.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)  # left-padded
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    print(f"[{label}]", file=sys.stderr)
    stream = not args.no_stream and len(rows) == 1 and tokenizer is not None and not demo
    timer = Timer(TextStreamer(tokenizer) if stream else None)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                         min_new_tokens=args.min_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                         seed=args.seed, streamer=timer)
    if not stream:
        for prompt, row in zip(rows, out[:, width:].tolist()):
            if tokenizer is None:
                print(" ".join(map(str, row)))
            elif demo:  # printable characters (the demo EOS decodes to nothing)
                print(f"prompt:    {tokenizer.decode(prompt)}\ngenerated: {tokenizer.decode(row)}\n"
                      f"token ids: {' '.join(map(str, row))}")
            else:
                print(tokenizer.decode(row))
    for line in summary(load_s, int(mask.sum()), out.shape[1] - width, len(rows), timer.times):
        print("zaya1: " + line, file=sys.stderr)
    return 0


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory (either layout, dense experts)")
    p.add_argument("output", help="new directory for the HF-layout checkpoint (written atomically)")
    p.add_argument("--expert-dtype", choices=QUANTIZE_TO, default=QUANTIZE_TO[0],
                   help="fp8: e4m3 codes with one fp32 scale per row, as compressed-tensors quantizes them")
    p.add_argument("--dtype", default="bfloat16", help="dtype of every other weight (default bfloat16)")


def run_quantize(args) -> int:
    """A checkpoint with quantized experts in the compressed-tensors format (transformers, vLLM and zaya1's
    native vLLM-Neuron model load it), the rest of the weights in --dtype, the tokenizer files copied."""
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise InputError(f"{args.output} is the checkpoint being quantized: writing there would replace it. "
                         f"Give a new output directory.")
    start = time.perf_counter()
    model = ZayaForCausalLM.from_pretrained(args.model, dtype=args.dtype, expert_dtype=args.expert_dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.save_pretrained(args.output, tokenizer_from=args.model)
    for warning in caught:
        print(f"zaya1 quantize: warning: {warning.message}", file=sys.stderr)
    tokenizer = sorted(name for name in TOKENIZER_FILES if (out / name).is_file())
    if not tokenizer:
        print(f"zaya1 quantize: warning: {args.model} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
              f"copy them to {out} to generate text from it", file=sys.stderr)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2 ** 30:.2f} GiB, {args.expert_dtype} experts; tokenizer files: "
          f"{', '.join(tokenizer) or 'none'}) in {time.perf_counter() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compile"]:  # its own parser (zaya1.neuron.compile_cli, also scripts/compile.py)
        return compile_cli.main(argv[1:])
    parser = argparse.ArgumentParser(prog="zaya1", description="ZAYA1 inference")
    parser.add_argument("--version", action="version",
                        version=f"zaya1 {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_arguments(sub.add_parser("generate", help="generate text from a prompt", epilog=GENERATE_EXAMPLES,
                                       formatter_class=argparse.RawDescriptionHelpFormatter))
    bench.add_arguments(sub.add_parser("bench", help="benchmark zaya1 against transformers (scripts/benchmark.py)"))
    cost_module.add_arguments(sub.add_parser("cost", help="Trainium2 cost model of the lowered graphs (torch-xla)"))
    sub.add_parser("compile", help="compile for Trainium2 (zaya1 compile --help)", add_help=False)
    _quantize_arguments(sub.add_parser("quantize", help="write a checkpoint with fp8 experts (compressed-tensors)"))
    args = parser.parse_args(argv)
    runs = {"generate": run_generate, "bench": bench.run, "cost": cost_module.run, "quantize": run_quantize}
    return run_reporting_errors("zaya1", runs[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
