"""The Neuron backend run through NxDI's own CPU mode (``NeuronApplicationBase.to_cpu()``), case by case.

Each case builds ``NeuronZayaForCausalLM`` with real NxDI / NxD (only the absent compiler / runtime packages
are shimmed, see shims/), runs it, and returns what it measured against the references: Zyphra's golden
outputs (test/data/golden) and zaya1's CPU model (itself tested against upstream transformers and the
goldens). Assertions live in test_nxdi_cpu.py, so the same cases serve tp 1 (in the pytest process) and
tp 2 (``torchrun --nproc-per-node 2 cases.py --tp 2 --out results.json``, gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "shims"))
import neuron_sdk_shims  # noqa: E402

neuron_sdk_shims.install()

from safetensors.torch import load_file, save_file  # noqa: E402

from zaya1 import ZayaForCausalLM  # noqa: E402
from zaya1.errors import InputError  # noqa: E402
from zaya1.generation import teacher_forced_logits  # noqa: E402
from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig, ZayaNeuronConfig  # noqa: E402

ROOT = HERE.parents[1]
GOLDEN = HERE.parent / "data" / "golden"
TOL = 1e-4  # max |dlogit| in float32


def child_env(*paths: str | Path, **extra) -> dict[str, str]:
    """The environment for a subprocess that runs NxDI: CPU PJRT, a free rendezvous port of its own (this
    process may hold a gloo group on MASTER_PORT already, and NxDI's to_cpu() binds 29500 by default), and
    PYTHONPATH = ``paths``, the repository's src, then the inherited PYTHONPATH."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join(str(p) for p in (*paths, ROOT / "src", os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PJRT_DEVICE="CPU", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=path,
                **extra)


def golden_dir(name: str, layout: str) -> Path:
    return GOLDEN / f"zaya1-original-{name}" / ("hf-layout" if layout == "hf" else "")


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / f"zaya1-original-{name}" / "golden.safetensors"))


# the golden outputs are the original implementation's: its router-norm eps and skip-expert output
ORIGINAL_REFERENCE = dict(router_norm_eps=1e-6, skip_expert_output="scaled_input")


def neuron_model(path, tp: int, batch: int = 2, seq_len: int = 64, max_context: int = 32, overrides=None,
                 **neuron_kwargs):
    """NeuronZayaForCausalLM in NxDI's CPU mode (on_cpu: NxDI's sampler without kernels), float32 (gloo
    has no bf16 at tp > 1)."""
    nc = ZayaNeuronConfig(tp_degree=tp, batch_size=batch, seq_len=seq_len, max_context_length=max_context,
                          torch_dtype=torch.float32, on_cpu=True, **neuron_kwargs)
    model = NeuronZayaForCausalLM(str(path), ZayaInferenceConfig.from_checkpoint(str(path), nc, **(overrides or {})))
    model.to_cpu()
    return model


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def steps(model, prompts: list[torch.Tensor], continuation: torch.Tensor, seq_ids: torch.Tensor, state_len: int):
    """Step API: right-padded prefill of ragged prompts into rows seq_ids, then decode of ``continuation``
    [B, n] (teacher forcing) with each row at its own position. -> logits [B, n + 1, V]."""
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, :len(p)] = p
    state = model.new_state(int(seq_ids.max()) + 1, state_len)
    out = [model.prefill(ids, lengths, seq_ids, state)]
    for k in range(continuation.shape[1]):
        out.append(model.decode(continuation[:, k:k + 1], lengths + k, seq_ids, state, kv_len=state.max_seq))
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------- cases
def case_golden(tp: int, name: str, layout: str) -> dict:
    """Golden set b (prefill + 7 cached decode steps, greedy) and a (last position) vs Zyphra's outputs."""
    g, path = golden(name), golden_dir(name, layout)
    model = neuron_model(path, tp, overrides=ORIGINAL_REFERENCE)
    cpu = ZayaForCausalLM.from_pretrained(path, **ORIGINAL_REFERENCE)
    prompts, generated = g["b_prompt_ids"], g["b_generated_ids"]
    logits = teacher_forced_logits(model, prompts, generated[:, :-1])
    tokens = model.generate(prompts, max_new_tokens=generated.shape[1], eos_token_id=[])[:, prompts.shape[1]:]
    return {"vs_golden": diff(logits, g["b_step_logits"]),
            "vs_cpu": diff(logits, teacher_forced_logits(cpu, prompts, generated[:, :-1])),
            "last_position_vs_golden": diff(logits[:, 0], g["a_logits"][:, -1]),
            "tokens_equal_golden": bool((tokens == generated).all())}


def case_long_decode(tp: int, name: str = "gqa") -> dict:
    """Prefill then 12 decode steps (CCA conv + value state carried from CTE to TKG) vs the CPU model."""
    path = golden_dir(name, "hf")
    model, cpu = neuron_model(path, tp), ZayaForCausalLM.from_pretrained(path)
    prompts = golden(name)["a_input_ids"]
    tokens = cpu.generate(prompts, max_new_tokens=13, eos_token_id=[])[:, prompts.shape[1]:]
    ours = model.generate(prompts, max_new_tokens=13, eos_token_id=[])[:, prompts.shape[1]:]
    return {"vs_cpu": diff(teacher_forced_logits(model, prompts, tokens[:, :-1]),
                           teacher_forced_logits(cpu, prompts, tokens[:, :-1])),
            "decode_steps": tokens.shape[1] - 1, "tokens_equal": bool((ours == tokens).all())}


def case_ragged(tp: int, name: str = "gqa", **neuron_kwargs) -> dict:
    """A right-padded batch of prompts of 12, 1 and 7 tokens, 9 decode steps each at its own position:
    every row vs the CPU model on that row alone."""
    path = golden_dir(name, "hf")
    model = neuron_model(path, tp, batch=3, **neuron_kwargs)
    cpu = ZayaForCausalLM.from_pretrained(path)
    ids = golden(name)["a_input_ids"]
    prompts = [ids[0], ids[1, :1], ids[1, :7]]
    worst, tokens_equal = 0.0, True
    continuation = torch.stack([cpu.generate(p[None], max_new_tokens=10, eos_token_id=[])[0, len(p):] for p in prompts])
    logits = steps(model, prompts, continuation[:, :-1], torch.arange(3), 64)
    for row, p in enumerate(prompts):
        alone = teacher_forced_logits(cpu, p[None], continuation[row:row + 1, :-1])
        worst = max(worst, diff(logits[row:row + 1], alone))
        tokens_equal &= bool((logits[row].argmax(-1)[:-1] == continuation[row, :-1]).all())
    ours = model.generate(torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True),
                          attention_mask=torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts],
                                                                         batch_first=True),
                          max_new_tokens=10, eos_token_id=[])
    generate_equal = all(bool((ours[r, 12:] == continuation[r]).all()) for r in range(3))
    return {"vs_cpu_alone": worst, "teacher_forced_argmax_equal": tokens_equal, "generate_equal": generate_equal}


def case_buckets(tp: int, name: str = "gqa") -> dict:
    """Context-encoding buckets 4 / 16 / 32: prompts of 3, 12 and 20 tokens each take another bucket."""
    path = golden_dir(name, "hf")
    model = neuron_model(path, tp, batch=1, enable_bucketing=True, context_encoding_buckets=[4, 16, 32],
                         token_generation_buckets=[64])
    cpu = ZayaForCausalLM.from_pretrained(path)
    ids = golden(name)["a_input_ids"].reshape(1, -1)  # 24 tokens
    worst = {}
    for n in (3, 12, 20):
        prompt = ids[:, :n]
        tokens = cpu.generate(prompt, max_new_tokens=4, eos_token_id=[])[:, n:]
        worst[n] = diff(teacher_forced_logits(model, prompt, tokens[:, :-1]),
                        teacher_forced_logits(cpu, prompt, tokens[:, :-1]))
    return {"vs_cpu_by_prompt_len": worst, "buckets": list(model.neuron_config.context_encoding_buckets)}


def case_continuous_batching(tp: int, name: str = "gqa") -> dict:
    """vLLM-style continuous batching: one sequence per context encoding into cache rows 2, 0, 1 (out of
    order), then token generation of all rows with seq_ids [2, 0, 1], vs the CPU model's rows."""
    path = golden_dir(name, "hf")
    model = neuron_model(path, tp, batch=3, is_continuous_batching=True, ctx_batch_size=1)
    cpu = ZayaForCausalLM.from_pretrained(path)
    ids = golden(name)["a_input_ids"]
    prompts = {2: ids[0, :9], 0: ids[1, :5], 1: ids[0, 3:]}
    order = torch.tensor([2, 0, 1])
    expected, actual = [], []
    for backend, out in ((cpu, expected), (model, actual)):
        state = backend.new_state(3, 64)
        firsts = {s: backend.prefill(p[None], torch.tensor([len(p)]), torch.tensor([s]), state)[0]
                  for s, p in prompts.items()}
        out.append(torch.stack([firsts[int(s)] for s in order]))
        positions = torch.tensor([len(prompts[int(s)]) for s in order])
        token = out[-1].argmax(-1)
        for k in range(8):
            out.append(backend.decode(token[:, None], positions + k, order, state, kv_len=64))
            token = out[-1].argmax(-1)
    return {"vs_cpu": diff(torch.stack(actual), torch.stack(expected)),
            "tokens_equal": bool((torch.stack(actual).argmax(-1) == torch.stack(expected).argmax(-1)).all())}


def case_absent_rows(tp: int, name: str = "gqa") -> dict:
    """Continuous batching when a live sequence sits out a token-generation step (vLLM schedules a subset):
    rows 0, 1, 2 decode together, then rows 0 and 2 alone, for which NxDI's model wrapper pads row 1 in as a
    copy of row 0 (whose position is behind row 1's), then all rows again. Every step's logits (greedy) vs
    the CPU model's, which never runs row 1 in that step."""
    path = golden_dir(name, "hf")
    model = neuron_model(path, tp, batch=3, is_continuous_batching=True, ctx_batch_size=1)
    cpu = ZayaForCausalLM.from_pretrained(path)
    ids = golden(name)["a_input_ids"]
    prompts = {0: ids[1, :4], 1: ids[0, :10], 2: ids[0, 2:9]}
    schedule = [[0, 1, 2]] * 2 + [[0, 2]] + [[0, 1, 2]] * 3
    logits = {}
    for backend in (cpu, model):
        state = backend.new_state(3, 64)
        token = {s: backend.prefill(p[None], torch.tensor([len(p)]), torch.tensor([s]), state)[0].argmax(-1)
                 for s, p in prompts.items()}
        position = {s: len(p) for s, p in prompts.items()}
        logits[backend] = []
        for rows in schedule:
            step = backend.decode(torch.stack([token[s] for s in rows])[:, None],
                                  torch.tensor([position[s] for s in rows]), torch.tensor(rows), state, kv_len=64)
            for s, row_logits in zip(rows, step):
                token[s], position[s] = row_logits.argmax(-1), position[s] + 1
            logits[backend].append(step)
    return {"vs_cpu": max(diff(a, b) for a, b in zip(logits[model], logits[cpu])),
            "row_1_after_its_absence_vs_cpu": max(diff(logits[model][k][1], logits[cpu][k][1])
                                                  for k in range(3, len(schedule)))}


def vocab_checkpoint(root: Path, vocab: int, name: str = "gqa") -> Path:
    """The golden HF-layout model (384 tokens) with its vocabulary grown to ``vocab`` rows (random rows at the
    embedding's scale; the lm_head is tied to it)."""
    src, dst = golden_dir(name, "hf"), root / f"{name}-vocab-{vocab}"
    if not (dst / "model.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        config = json.loads((src / "config.json").read_text())
        weights = load_file(str(src / "model.safetensors"))
        emb = weights["model.embed_tokens.weight"]
        extra = torch.randn(vocab - emb.shape[0], emb.shape[1], generator=torch.Generator().manual_seed(7))
        weights["model.embed_tokens.weight"] = torch.cat([emb, (extra * emb.float().std()).to(emb.dtype)])
        config["vocab_size"] = vocab
        save_file(weights, str(dst / "model.safetensors"))
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def case_odd_vocab(tp: int, root: str) -> dict:
    """vocab_size 385 at tp 2: NxD pads the lm_head; the padded columns must be masked, the real ones not."""
    path = vocab_checkpoint(Path(root), 385)
    model, cpu = neuron_model(path, tp), ZayaForCausalLM.from_pretrained(path)
    prompts = golden("gqa")["a_input_ids"]
    tokens = cpu.generate(prompts, max_new_tokens=6, eos_token_id=[])[:, prompts.shape[1]:]
    logits = teacher_forced_logits(model, prompts, tokens[:, :-1])
    expected = teacher_forced_logits(cpu, prompts, tokens[:, :-1])
    return {"vocab_size": model.config.vocab_size, "vs_cpu": diff(logits, expected),
            "last_column_vs_cpu": diff(logits[..., -1], expected[..., -1])}


def bf16_checkpoint(root: Path, name: str = "gqa") -> Path:
    """The golden HF-layout model stored in bf16, as the published ZAYA1 checkpoints are (``--expert-dtype fp8``
    quantizes in the stored dtype)."""
    src, dst = golden_dir(name, "hf"), root / f"{name}-bf16"
    if not (dst / "model.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        weights = {k: v if "balancing" in k else v.to(torch.bfloat16)
                   for k, v in load_file(str(src / "model.safetensors")).items()}
        save_file(weights, str(dst / "model.safetensors"))
        (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def case_fp8_experts(tp: int, root: str) -> dict:
    """``expert_dtype="fp8"`` (zaya1 compile --expert-dtype fp8) from a bf16 checkpoint: NxD shards and loads
    the fp8 codes and row scales as they are (1 byte per expert weight on every rank) and the graphs give the
    CPU model's fp8 logits (whose quantization equals compressed-tensors' and whose logits equal transformers
    + compressed-tensors: test/unit/test_quantized_experts.py). The same experts stored in a compressed-tensors
    checkpoint compile as stored."""
    path = bf16_checkpoint(Path(root))
    model = neuron_model(path, tp, overrides={"expert_dtype": "fp8"})
    cpu = ZayaForCausalLM.from_pretrained(path, expert_dtype="fp8")
    dense = ZayaForCausalLM.from_pretrained(path)
    prompts = golden("gqa")["a_input_ids"]
    tokens = cpu.generate(prompts, max_new_tokens=8, eos_token_id=[])[:, prompts.shape[1]:]
    ours = model.generate(prompts, max_new_tokens=8, eos_token_id=[])[:, prompts.shape[1]:]
    logits = teacher_forced_logits(model, prompts, tokens[:, :-1])
    experts = model.context_encoding_model.model.model.layers[0].mlp.experts
    local = cpu.config.moe_intermediate_size // tp
    # a checkpoint stored with fp8 experts (compressed-tensors format, as `zaya1 quantize` writes it) compiles
    # as stored, without the flag
    stored = Path(root) / "gqa-fp8-stored"
    if torch.distributed.get_rank() == 0 and not (stored / "config.json").is_file():
        cpu.save_pretrained(stored)
    torch.distributed.barrier()  # every rank reads it once it is whole (to_cpu() has set up the gloo group)
    stored_model = neuron_model(stored, tp)
    stored_tokens = stored_model.generate(prompts, max_new_tokens=8, eos_token_id=[])[:, prompts.shape[1]:]
    return {"vs_cpu": diff(logits, teacher_forced_logits(cpu, prompts, tokens[:, :-1])),
            "stored_vs_cpu": diff(teacher_forced_logits(stored_model, prompts, tokens[:, :-1]),
                                  teacher_forced_logits(ZayaForCausalLM.from_pretrained(stored), prompts,
                                                        tokens[:, :-1])),
            "stored_tokens_equal": bool((stored_tokens == tokens).all()),
            "stored_manifest_expert_dtype": stored_model.manifest.expert_dtype,
            "vs_dense_bf16_weights": diff(logits, teacher_forced_logits(dense, prompts, tokens[:, :-1])),
            "tokens_equal": bool((ours == tokens).all()), "codes_dtype": str(experts.gate_up_proj.codes.dtype),
            "codes_shape": list(experts.gate_up_proj.codes.shape), "local_rows": 2 * local,
            "manifest_expert_dtype": model.manifest.expert_dtype}


def case_nxdi_logit_check(tp: int, root: str, tokens: int = 16) -> dict:
    """NxDI's check_accuracy_logits_v2 as zaya1.neuron.accuracy runs it (NxDI's HF adapter generating with
    min_new_tokens, then logit_validation, here shims/validation_equivalent.py) with torch_neuronx's default
    tolerances, on the golden gqa model grown to 1024 tokens (the default top-1000 tolerance needs >= 1000
    columns): passes; against the same golden scaled by 1.1 (what a wrong model would give) it must fail."""
    from neuronx_distributed_inference.utils.exceptions import LogitMatchingValidationError

    from zaya1.neuron.accuracy import check_logits, expected_logits

    path = vocab_checkpoint(Path(root), 1024)
    model, cpu = neuron_model(path, tp), ZayaForCausalLM.from_pretrained(path)
    prompts = golden("gqa")["a_input_ids"]
    eos = cpu.config.eos_token_id
    expected = expected_logits(cpu, prompts, tokens, eos)
    uses = "torch_neuronx.testing.validation.logit_validation"
    before = neuron_sdk_shims.EQUIVALENT_USES[uses]
    results = check_logits(model, expected, prompts, eos)
    try:
        check_logits(model, expected * 1.1, prompts, eos)
        scaled = "passed"
    except LogitMatchingValidationError as exc:
        scaled = str(exc).splitlines()[-1]
    return {"positions_validated": [len(row) for row in results],
            "max_error_all_columns": max(r["error_map"][None] for row in results for r in row),
            "eos_masked_in_golden": bool(torch.isneginf(expected[..., eos]).all()),
            "golden_tokens_without_eos": not bool(torch.isin(expected.argmax(-1), torch.tensor(eos)).any()),
            "validations_run": neuron_sdk_shims.EQUIVALENT_USES[uses] - before, "scaled_golden": scaled}


def refusal(model, prompts, **kwargs) -> str:
    """The InputError message generate raises for this request ('' if it runs)."""
    try:
        model.generate(prompts, eos_token_id=[], **kwargs)
    except InputError as e:
        return str(e)
    return ""


def case_generate(tp: int, name: str = "gqa") -> dict:
    """generate as a user calls it: greedy, sampled (same seed -> same tokens as the CPU model: temperature
    and top-p applied once, by the shared sampler), EOS stopping a row early, streaming, and requests beyond
    the compiled shapes (batch 2, seq_len 64) refused before anything runs."""
    path = golden_dir(name, "hf")
    model, cpu = neuron_model(path, tp), ZayaForCausalLM.from_pretrained(path)
    prompts = golden(name)["a_input_ids"]
    n = prompts.shape[1]
    greedy = cpu.generate(prompts, max_new_tokens=8, eos_token_id=[])
    sampled = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=50, seed=123, max_new_tokens=8, eos_token_id=[])
    eos = int(greedy[0, n + 2])  # row 0 stops after 3 tokens
    streamed = []
    ours_eos = model.generate(prompts, max_new_tokens=8, eos_token_id=eos, streamer=lambda t: streamed.append(t.clone()))
    cpu_eos = cpu.generate(prompts, max_new_tokens=8, eos_token_id=eos)
    return {"greedy_equal": bool((model.generate(prompts, max_new_tokens=8, eos_token_id=[]) == greedy).all()),
            "sampled_equal": bool((model.generate(prompts, **sampled) == cpu.generate(prompts, **sampled)).all()),
            "eos_equal": bool(ours_eos.shape == cpu_eos.shape and (ours_eos == cpu_eos).all()),
            "eos_row_stopped": bool((ours_eos[0, n + 3:] == model.config.pad_token_id).all()),
            "streamed_equal": bool(torch.equal(torch.stack(streamed, dim=1), ours_eos[:, n:])),
            "refuses_beyond_seq_len": "compiled seq_len=64" in refusal(model, prompts, max_new_tokens=64),
            "refuses_max_length_beyond_seq_len": "compiled seq_len=64" in refusal(model, prompts, max_length=n + 60),
            "refuses_beyond_batch": "compiled batch_size=2. Split" in refusal(model, prompts.repeat(2, 1),
                                                                                max_new_tokens=2)}


def case_on_device_greedy(tp: int, name: str = "gqa") -> dict:
    """On-device sampling (NxDI's Sampler, greedy): the device returns tokens; generate == the CPU model's."""
    from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig

    path = golden_dir(name, "hf")
    model = neuron_model(path, tp, on_device_sampling_config=OnDeviceSamplingConfig(do_sample=False, top_k=1))
    cpu = ZayaForCausalLM.from_pretrained(path)
    prompts = golden(name)["a_input_ids"]
    ours = model.generate(prompts, max_new_tokens=8, eos_token_id=[])
    return {"tokens_equal": bool((ours == cpu.generate(prompts, max_new_tokens=8, eos_token_id=[])).all())}


def case_on_device_sampling(tp: int, name: str = "gqa", draws: int = 128) -> dict:
    """On-device sampling with temperature 0.7 and top-p 0.9: the distribution of the first new token over
    ``draws`` x batch draws vs the CPU sampler's exact distribution (total variation distance)."""
    from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig

    from zaya1.generation import SamplingParams, sample

    path = golden_dir(name, "hf")
    batch = 4
    model = neuron_model(path, tp, batch=batch, on_device_sampling_config=OnDeviceSamplingConfig(
        do_sample=True, top_k=384, global_topk=384, dynamic=True))
    cpu = ZayaForCausalLM.from_pretrained(path)
    prompt = golden(name)["a_input_ids"][:1].expand(batch, -1)
    params = SamplingParams(True, 0.7, 0, 0.9)
    counts = torch.zeros(model.config.vocab_size)
    model.configure_sampling(params)
    for i in range(draws):
        torch.manual_seed(i)
        state = model.new_state(batch, 64)
        tokens = model.prefill(prompt, torch.full((batch,), prompt.shape[1]), torch.arange(batch), state)
        counts += torch.bincount(tokens, minlength=counts.numel()).float()
    logits = cpu(prompt[:1]).logits[0, -1]

    def cpu_distribution(p: SamplingParams) -> torch.Tensor:
        tokens = sample(logits.expand(50_000, -1), p, torch.Generator().manual_seed(0))
        return torch.bincount(tokens, minlength=counts.numel()).float() / tokens.numel()

    empirical = counts / counts.sum()
    twice = SamplingParams(True, params.temperature ** 2, 0, params.top_p)  # temperature applied twice
    return {"total_variation": 0.5 * (empirical - cpu_distribution(params)).abs().sum().item(),
            "total_variation_if_applied_twice": 0.5 * (empirical - cpu_distribution(twice)).abs().sum().item(),
            "draws": int(counts.sum()), "support": int((counts > 0).sum())}


CASES = {
    "golden_tiny_original": lambda tp, root: case_golden(tp, "tiny", "original"),
    "golden_tiny_hf": lambda tp, root: case_golden(tp, "tiny", "hf"),
    "golden_gqa_original": lambda tp, root: case_golden(tp, "gqa", "original"),
    "golden_gqa_hf": lambda tp, root: case_golden(tp, "gqa", "hf"),
    "long_decode": lambda tp, root: case_long_decode(tp),
    "ragged": lambda tp, root: case_ragged(tp),
    "buckets": lambda tp, root: case_buckets(tp),
    "continuous_batching": lambda tp, root: case_continuous_batching(tp),
    "absent_rows": lambda tp, root: case_absent_rows(tp),
    "odd_vocab": lambda tp, root: case_odd_vocab(tp, root),
    "generate": lambda tp, root: case_generate(tp),
    "on_device_greedy": lambda tp, root: case_on_device_greedy(tp),
    "on_device_sampling": lambda tp, root: case_on_device_sampling(tp),
    "nxdi_logit_check": case_nxdi_logit_check,
    "fp8_experts": case_fp8_experts,
}


def run(names: list[str], tp: int, root: str) -> dict:
    results = {}
    for name in names:
        del neuron_sdk_shims.REACHED[:]
        try:
            with torch.inference_mode():
                results[name] = {"ok": True, **CASES[name](tp, root)}
        except Exception as exc:  # reported per case; the test shows the traceback
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-4000:]}
        results[name]["shims_reached"] = list(neuron_sdk_shims.REACHED)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--root", required=True, help="scratch directory for derived checkpoints")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if "WORLD_SIZE" in os.environ:  # torchrun: one gloo group for all cases (to_cpu() would init it per model)
        torch.distributed.init_process_group("gloo")
        del os.environ["WORLD_SIZE"]
    results = run(args.cases.split(","), args.tp, args.root)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
