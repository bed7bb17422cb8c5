"""ZAYA1 on Trainium2 through NxDI, compiled with `zaya1 compile`, against Zyphra's golden outputs, zaya1's CPU
model (float32 reference, itself tested against upstream transformers and the goldens) and NxDI's accuracy check.

Golden tests run on the golden models of test/data/golden at every tp degree they shard to (tiny: tp 1 only,
one query head; gqa: 4 query / 2 KV heads, tp 1, 2, 4); real-weight tests need ZAYA1_CHECKPOINT."""
import argparse
import os
import statistics

import pytest
import torch

from trn2_helpers import (BF16_FACTOR, CB_SETTINGS, F32_TOL, GOLDEN_SETTINGS, REAL_SETTINGS, BucketRecorder, diff,
                          golden, golden_dir, greedy_continuation, random_prompt, teacher_forced,
                          unsupported_tp)
from zaya1 import ArtifactError, ZayaConfig
from zaya1.tools import bench


@pytest.fixture(params=["tiny", "gqa"])
def golden_name(request, tp_degree) -> str:
    why = unsupported_tp(request.param, tp_degree)
    if why:
        pytest.skip(why)
    return request.param


def golden_model(trn2, name: str, dtype: str = "float32"):
    return trn2.load(golden_dir(name), dtype=dtype, **GOLDEN_SETTINGS)


# ---------------------------------------------------------------------------------------------- golden models
def test_golden_teacher_forced_float32(trn2, golden_name):
    """Context encoding of golden set b's prompts, then token generation of its greedy tokens (teacher forced,
    the step API without generate): all 8 steps' logits equal Zyphra's float32 ones within F32_TOL."""
    g = golden(golden_name)
    logits = teacher_forced(golden_model(trn2, golden_name), list(g["b_prompt_ids"]), g["b_generated_ids"][:, :-1])
    assert diff(logits, g["b_step_logits"]) <= F32_TOL


def test_golden_teacher_forced_bfloat16(trn2, cpu_model, golden_name):
    """The same in bfloat16: no further from Zyphra's float32 logits than BF16_FACTOR times the distance of
    zaya1's CPU bfloat16 path on the same steps (measured here)."""
    g = golden(golden_name)
    prompts, continuation = list(g["b_prompt_ids"]), g["b_generated_ids"][:, :-1]
    cpu_bf16 = teacher_forced(cpu_model(golden_dir(golden_name), torch.bfloat16), prompts, continuation)
    bound = BF16_FACTOR * diff(cpu_bf16, g["b_step_logits"])
    device = teacher_forced(golden_model(trn2, golden_name, "bfloat16"), prompts, continuation)
    assert diff(device, g["b_step_logits"]) <= bound, f"bound {bound:.4f} = {BF16_FACTOR} x CPU bfloat16"


def test_golden_generate_tokens(trn2, golden_name):
    """generate (zaya1.generation's loop over the device steps) gives Zyphra's 8 greedy tokens per prompt; their
    top-1/top-2 logit gaps are >= 0.076 (golden README), far above F32_TOL, so equality is the right test."""
    g = golden(golden_name)
    out = golden_model(trn2, golden_name).generate(g["b_prompt_ids"], max_new_tokens=8, eos_token_id=[])
    assert torch.equal(out[:, g["b_prompt_ids"].shape[1]:], g["b_generated_ids"])


def test_batch_independence(trn2, cpu_model, golden_name):
    """Prompts of 12 and 7 tokens (golden set c) together in one right-padded batch, each row decoding at its
    own position, vs each prompt alone in the same compiled model, and vs the CPU model on that prompt alone."""
    model, cpu = golden_model(trn2, golden_name), cpu_model(golden_dir(golden_name))
    c = golden(golden_name)
    prompts = [c["c_input_ids"][row][c["c_valid"][row]] for row in range(2)]
    continuation = torch.stack([greedy_continuation(cpu, p, 6) for p in prompts])
    together = teacher_forced(model, prompts, continuation)
    for row, p in enumerate(prompts):
        alone = teacher_forced(model, [p], continuation[row:row + 1])
        assert diff(alone[0], together[row]) <= F32_TOL, f"prompt {row} differs when batched"
        assert diff(together[row], teacher_forced(cpu, [p], continuation[row:row + 1])[0]) <= F32_TOL


def test_one_token_prompt(trn2, cpu_model, golden_name):
    """A 1-token prompt (prefill widens it to 2 so NxDI runs context encoding): step logits vs the CPU model,
    and generate picks at every step a token the CPU model ranks first within 2 x F32_TOL."""
    model, cpu = golden_model(trn2, golden_name), cpu_model(golden_dir(golden_name))
    prompt = golden(golden_name)["a_input_ids"][0, :1]
    continuation = greedy_continuation(cpu, prompt, 8)[None]
    assert diff(teacher_forced(model, [prompt], continuation), teacher_forced(cpu, [prompt], continuation)) <= F32_TOL
    tokens = model.generate(prompt[None], max_new_tokens=8, eos_token_id=[])[:, 1:]
    reference = teacher_forced(cpu, [prompt], tokens[:, :-1])  # [1, 8, V]: the CPU logits each token came from
    chosen = reference.gather(-1, tokens[..., None])[..., 0]
    assert (reference.amax(-1) - chosen).max() <= 2 * F32_TOL, (tokens, reference.argmax(-1))


def test_every_bucket(trn2, cpu_model, golden_name):
    """Prompts of 1 token, of each context bucket's length but the last (NxDI's first fit then takes the next
    bucket) and of the full last bucket; each decodes until its positions pass every token-generation bucket
    it can reach. NxDI must pick every compiled bucket, and every step's logits equal the CPU model's."""
    model, cpu = golden_model(trn2, golden_name), cpu_model(golden_dir(golden_name))
    vocab = model.config.vocab_size
    with BucketRecorder(model) as buckets:
        context, token = buckets.compiled("context"), buckets.compiled("token")
        for length in [1, *context]:
            prompt = random_prompt(length, vocab, seed=length)
            continuation = greedy_continuation(cpu, prompt, max(token[-2] - length + 1, 1))[None]
            assert diff(teacher_forced(model, [prompt], continuation),
                        teacher_forced(cpu, [prompt], continuation)) <= F32_TOL, f"prompt of {length} tokens"
    assert sorted(set(buckets.picked["context"])) == context
    assert sorted(set(buckets.picked["token"])) == token


def continuous_batching(model, prompts: dict[int, torch.Tensor], order: torch.Tensor, steps: int,
                        tokens: torch.Tensor | None = None):
    """vLLM's pattern: one context encoding per sequence into its cache row (``prompts``: row -> ids, in the
    dict's order), then token generation of all rows in ``order``, feeding ``tokens`` [steps, B] (default:
    this model's greedy choice). -> (logits [steps + 1, B, V], the tokens fed)."""
    state = model.new_state(len(prompts), 64)
    first = {row: model.prefill(p[None], torch.tensor([len(p)]), torch.tensor([row]), state)[0]
             for row, p in prompts.items()}
    logits = [torch.stack([first[int(row)] for row in order])]
    positions = torch.tensor([len(prompts[int(row)]) for row in order])
    fed = []
    for k in range(steps):
        fed.append(logits[-1].argmax(-1) if tokens is None else tokens[k])
        logits.append(model.decode(fed[-1][:, None], positions + k, order, state))
    return torch.stack(logits), torch.stack(fed)


def test_continuous_batching(trn2, cpu_model, golden_name):
    """Compiled with --continuous-batching (ctx_batch_size 1), from the HF-layout checkpoint: sequences are
    prefilled one at a time into cache rows 2, 0, 1, then decoded together with seq_ids [2, 0, 1] (not sorted):
    logits equal the CPU model's through the same step calls (teacher forced on its tokens)."""
    path = golden_dir(golden_name, "hf")
    model, cpu = trn2.load(path, dtype="float32", **CB_SETTINGS), cpu_model(path)
    ids = golden(golden_name)["a_input_ids"]
    prompts = {2: ids[0, :9], 0: ids[1, :5], 1: ids[0, 3:]}
    order = torch.tensor([2, 0, 1])
    expected, tokens = continuous_batching(cpu, prompts, order, 8)
    actual, _ = continuous_batching(model, prompts, order, 8, tokens)
    assert diff(actual, expected) <= F32_TOL


def test_load_refuses_other_settings(trn2, golden_name):
    """Artifacts compiled for batch 2 are refused for batch 4, naming the field (zaya1's manifest)."""
    from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig

    compiled = trn2.compiled(golden_dir(golden_name), dtype="float32", **GOLDEN_SETTINGS)
    config = ZayaInferenceConfig.load(str(compiled))
    config.neuron_config.batch_size += 2
    with pytest.raises(ArtifactError, match="batch_size"):
        NeuronZayaForCausalLM(str(golden_dir(golden_name)), config).load(str(compiled))


# ---------------------------------------------------------------------------------------------- real checkpoint
PROMPTS = ["The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
           "def fibonacci(n):"]


@pytest.fixture(scope="module")
def real(trn2, real_checkpoint):
    return trn2.load(real_checkpoint, batch_size=len(PROMPTS), **REAL_SETTINGS)


@pytest.fixture(scope="module")
def real_prompts(tokenizer) -> list[torch.Tensor]:
    """Completion prompts, encoded without special tokens: the ZAYA1-8B tokenizer appends its EOS to plain text."""
    return [torch.tensor(tokenizer.encode(p, add_special_tokens=False)) for p in PROMPTS]


def test_capital_of_france(real, tokenizer, real_prompts):
    eos = real.config.eos_token_id
    assert int(real_prompts[0][-1]) not in (eos if isinstance(eos, list) else [eos]), "the prompt ends in an EOS"
    out = real.generate(real_prompts[0][None], max_new_tokens=8, eos_token_id=[])
    assert "Paris" in tokenizer.decode(out[0, len(real_prompts[0]):].tolist())


def test_logits_within_nxdi_tolerance(real, cpu_model, real_checkpoint, real_prompts):
    """NxDI's own accuracy check (check_accuracy_logits_v2, its default tolerances) over 64 greedy tokens of the
    float32 CPU reference; where the device's greedy token differs, NxDI continues from the reference's."""
    from neuronx_distributed_inference.utils.accuracy import check_accuracy_logits_v2
    from transformers import GenerationConfig

    reference, prompt = cpu_model(real_checkpoint), real_prompts[0]
    tokens = greedy_continuation(reference, prompt, 64)
    expected = teacher_forced(reference, [prompt], tokens[None, :-1])  # [1, 64, V]
    config = GenerationConfig(do_sample=False, pad_token_id=real.config.pad_token_id)
    check_accuracy_logits_v2(real, expected.transpose(0, 1), prompt[None], torch.ones_like(prompt[None]), config,
                              num_tokens_to_check=64)


def test_real_bfloat16_and_batch_independence(real, cpu_model, real_checkpoint, real_prompts):
    """The 4 prompts together (ragged, right-padded) and each alone, 16 teacher-forced steps: every row within
    BF16_FACTOR x the CPU bfloat16 model's distance to the float32 reference, and alone vs together too."""
    ref32, ref16 = cpu_model(real_checkpoint), cpu_model(real_checkpoint, torch.bfloat16)
    continuation = [greedy_continuation(ref32, p, 16)[None, :-1] for p in real_prompts]
    expected = [teacher_forced(ref32, [p], c)[0] for p, c in zip(real_prompts, continuation)]
    bound = BF16_FACTOR * max(diff(teacher_forced(ref16, [p], c)[0], e)
                              for p, c, e in zip(real_prompts, continuation, expected))
    together = teacher_forced(real, real_prompts, torch.cat(continuation))
    for row, (p, c, e) in enumerate(zip(real_prompts, continuation, expected)):
        assert diff(together[row], e) <= bound, f"prompt {row}: bound {bound:.4f}"
        assert diff(teacher_forced(real, [p], c)[0], together[row]) <= bound, f"prompt {row} differs when batched"


def bench_defaults() -> argparse.Namespace:
    """`zaya1 bench`'s defaults (prompt length, batches, new tokens, repeats, seed), so both report alike."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([])


BENCH = bench_defaults()


@pytest.mark.parametrize("batch", [int(b) for b in BENCH.batches.split(",")])
def test_performance(trn2, real_checkpoint, tp_degree, perf_records, release, batch):
    """TTFT and decode tokens/s as `zaya1 bench` measures them (its NeuronRunner and defaults: random prompts of
    its first prompt length, medians of its repeats after a warm-up), each batch compiled at that batch size.
    Records to ZAYA1_PERF_JSON with the buckets NxDI ran; speeds are recorded, not asserted."""
    prompt_len = int(BENCH.prompt_lens.split(",")[0])
    compiled = trn2.compiled(real_checkpoint, batch_size=batch, **REAL_SETTINGS)
    runner = bench.NeuronRunner(str(compiled), real_checkpoint)
    release.append(runner)
    vocab = ZayaConfig.from_pretrained(real_checkpoint).vocab_size
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(BENCH.seed + 1))
    with BucketRecorder(runner.model) as buckets:
        runs = [runner.generate_timed(ids, BENCH.new_tokens) for _ in range(BENCH.repeats + 1)][1:]
    assert all(r.tokens.shape == (batch, BENCH.new_tokens) for r in runs)
    common = {"batch": batch, "prompt_len": prompt_len, "tp": tp_degree, "dtype": REAL_SETTINGS["dtype"],
              "lnc": os.environ.get("NEURON_LOGICAL_NC_CONFIG"),
              "context_bucket": sorted(set(buckets.picked["context"])),
              "token_buckets": sorted(set(buckets.picked["token"])), "new_tokens": BENCH.new_tokens,
              "repeats": BENCH.repeats, "backend": "neuron", "compiled": compiled.name}
    perf_records.append({"metric": "ttft", "value": statistics.median(r.ttft for r in runs) * 1e3, "unit": "ms",
                         **common})
    perf_records.append({"metric": "decode", "value": batch / statistics.median(r.decode for r in runs),
                         "unit": "tok/s", **common})
