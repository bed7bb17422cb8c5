#!/usr/bin/env python
r"""Compare compiled Neuron logits with the CPU reference, position by position.

The CPU reference (zaya1.ZayaForCausalLM, float32 by default) greedily generates --num-tokens tokens; both
backends are then teacher-forced on prompt + those tokens, and for every position the script prints
max |dlogit| and whether the top-1 tokens agree. With --nxdi-check it also runs NxDI's
check_accuracy_logits_v2 (torch_neuronx logit validation, its default tolerances) like for like: its golden made
as NxDI makes it (greedy with min_new_tokens, so the EOS columns are -inf on both sides; zaya1.neuron.accuracy).

    python scripts/check_accuracy.py --model-path /ckpt/ZAYA1-8B --compiled-model-path /tmp/zaya1-tp4 \
        --prompt "The capital of France is" --num-tokens 64

Without Trainium, ``--cpu-mode`` runs the same NxDI graphs in NxDI's own CPU mode (float32; tp > 1 under
``torchrun --nproc-per-node N``) instead of loading compiled artifacts:

    python scripts/check_accuracy.py --model-path /ckpt/ZAYA1-8B --cpu-mode --tp-degree 1 --num-tokens 16

The Neuron model must have been compiled without --on-device-sampling (logits on the host).
Exit status 1 if top-1 agreement is below --min-top1 or NxDI's check fails.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from zaya1 import ZayaForCausalLM
from zaya1.tools.cli import token_ids
from zaya1.errors import run_reporting_errors
from zaya1.generation import Tokenizer, teacher_forced_logits


def compare(expected: torch.Tensor, actual: torch.Tensor) -> list[dict]:
    """expected/actual [B, N, V] -> one record per position with max |dlogit| and top-1 agreement."""
    diff = (expected - actual).abs().amax(dim=-1)  # [B, N]
    agree = expected.argmax(-1) == actual.argmax(-1)
    return [{"position": n, "max_abs_dlogit": float(diff[:, n].max()), "top1_agree": float(agree[:, n].float().mean())}
            for n in range(expected.shape[1])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--compiled-model-path", help="artifacts written by zaya1 compile")
    where.add_argument("--cpu-mode", action="store_true", help="run the NxDI graphs in NxDI's CPU mode instead")
    p.add_argument("--tp-degree", type=int, default=1, help="--cpu-mode: tensor parallel degree")
    p.add_argument("--prompt", action="append", help="prompt text (repeat; prompts must tokenize to equal length)")
    p.add_argument("--prompt-ids", type=token_ids, help="comma-separated token ids instead of text (no tokenizer)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat template")
    p.add_argument("--special-tokens", action="store_true",
                   help="encode plain text with the tokenizer's special tokens (ZAYA1-8B's appends its EOS, which "
                        "makes a completion prompt end a turn); default: the text alone")
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--reference-dtype", default="float32")
    p.add_argument("--min-top1", type=float, default=0.95, help="fail below this mean top-1 agreement")
    p.add_argument("--json", help="write the per-position records here")
    p.add_argument("--nxdi-check", action="store_true", help="also run NxDI's check_accuracy_logits_v2")
    args = p.parse_args(argv)
    return run_reporting_errors("check_accuracy.py", check, p, args)


def check(p, args) -> int:
    from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig, ZayaNeuronConfig
    from zaya1.neuron.accuracy import expected_logits

    if args.prompt_ids:
        rows = [args.prompt_ids]
    else:
        tokenizer = Tokenizer.from_pretrained(args.model_path)
        rows = [tokenizer.encode(text, chat=args.chat, add_special_tokens=args.special_tokens)
                for text in (args.prompt or ["The capital of France is"])]
    if len({len(r) for r in rows}) != 1:
        p.error("prompts must tokenize to the same length (compare one prompt per run otherwise)")
    prompts = torch.tensor(rows)

    reference = ZayaForCausalLM.from_pretrained(args.model_path, dtype=args.reference_dtype)
    tokens = reference.generate(prompts, max_new_tokens=args.num_tokens, eos_token_id=[])[:, prompts.shape[1]:]
    expected = teacher_forced_logits(reference, prompts, tokens[:, :-1])  # [B, N, V]
    eos = reference.config.eos_token_id
    nxdi_golden = expected_logits(reference, prompts, args.num_tokens, eos) if args.nxdi_check else None
    del reference

    if args.cpu_mode:
        total = prompts.shape[1] + args.num_tokens + 1
        # NxDI's check prefills prompt + the tokens before a divergence again: its context must hold them
        nc = ZayaNeuronConfig(tp_degree=args.tp_degree, batch_size=len(rows), seq_len=total,
                              max_context_length=total if args.nxdi_check else prompts.shape[1] + 1,
                              torch_dtype=torch.float32, on_cpu=True)
        neuron = NeuronZayaForCausalLM(args.model_path, ZayaInferenceConfig.from_checkpoint(args.model_path, nc))
        neuron.to_cpu()
    else:
        neuron = NeuronZayaForCausalLM.from_compiled(args.compiled_model_path, model_path=args.model_path)
    actual = teacher_forced_logits(neuron, prompts, tokens[:, :-1])
    records = compare(expected, actual)
    for r in records:
        print(f"position {r['position']:4d}  max|dlogit| {r['max_abs_dlogit']:.4f}  top-1 agree {r['top1_agree']:.2f}")
    top1 = sum(r["top1_agree"] for r in records) / len(records)
    worst = max(r["max_abs_dlogit"] for r in records)
    print(f"overall: max|dlogit| {worst:.4f}, mean top-1 agreement {top1:.3f} over {len(records)} positions")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"positions": records, "max_abs_dlogit": worst, "top1_agreement": top1}, f, indent=1)

    nxdi_passed = nxdi_golden is None or nxdi_check(neuron, nxdi_golden, prompts, eos)
    return 0 if top1 >= args.min_top1 and nxdi_passed else 1


def nxdi_check(neuron, golden: torch.Tensor, prompts: torch.Tensor, eos: list[int]) -> bool:
    """NxDI's check_accuracy_logits_v2 against its golden (zaya1.neuron.accuracy); prints the verdict."""
    from neuronx_distributed_inference.utils.exceptions import LogitMatchingValidationError

    from zaya1.neuron.accuracy import check_logits

    try:
        check_logits(neuron, golden, prompts, eos)
    except LogitMatchingValidationError as exc:
        print(f"NxDI check_accuracy_logits_v2: FAILED\n{exc}")
        return False
    print("NxDI check_accuracy_logits_v2: passed")
    return True


if __name__ == "__main__":
    sys.exit(main())
