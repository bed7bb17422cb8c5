"""The native vLLM Neuron model (zaya1.vllm_neuron) driven by the runner emulation, against independent
references: upstream transformers (teacher-forced logits of each generated token, greedy tokens) and Zyphra's
golden outputs (original layout). Scheduling as the plugin's runner does it: segmented prefill, decode batches
with holes, sequences starting and finishing between steps, both padding sentinels, context buckets, simulated
tensor parallelism (KV heads replicated at tp 4), prefix caching with the CCA state kept per block. The bf16
standard is checked at real widths in test_accuracy.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zaya1
from zaya1 import ConfigError, InputError
from zaya1.simulated_tp import thread_comms
from zaya1.vllm_neuron import ZayaNativeForCausalLM, emulate, min_block_size
from zaya1.vllm_neuron.sampler import candidate_scores, sample
from zaya1.vllm_neuron.spec import kv_page_bytes, state_bytes
from zaya_testlib import GOLDEN_DIR, TOL, max_diff, upstream, write_large_checkpoint

pytestmark = pytest.mark.usefixtures("inference")


def prompts_for(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def reference_logits(hf, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """Upstream's logits at the positions that chose each generated token (teacher forcing) [n, V]."""
    ids = torch.tensor([prompt + generated[:-1]])
    return hf(ids).logits[0, len(prompt) - 1:].float()


def check_against(hf, prompts, results, report, label: str) -> float:
    worst = 0.0
    for prompt, result in zip(prompts, results):
        ref = reference_logits(hf, prompt, result.tokens)
        worst = max(worst, max_diff(result.logits, ref))
        assert result.tokens == ref.argmax(-1).tolist(), f"{label}: greedy tokens differ from upstream's"
    assert report(f"native {label}", worst) <= TOL
    return worst


@pytest.mark.parametrize("preset,tp", [("gqa4x2", 1), ("gqa4x2", 2), ("gqa8x2", 4), ("sliding", 1), ("sliding", 2)])
def test_emulated_serving_matches_upstream(tiny, report, preset, tp):
    """Segmented prefill (prompts longer than the 8-token bucket), decode rows finishing and starting between
    steps (5 prompts, 3 rows, different lengths), context buckets, hybrid_sliding layers (window 4)."""
    upstream()
    m = tiny(preset)
    prompts = prompts_for(m.config.vocab_size, (3, 9, 17, 5, 12))
    results = emulate(m.path, prompts, [5, 3, 6, 2, 4], tp_degree=tp, block_size=8, prefill_bucket=8,
                      max_num_seqs=3, max_model_len=64, context_buckets=[16, 32, 64])
    check_against(m.hf, prompts, results, report, f"{preset} tp{tp}")


def test_padding_sentinel_of_vllm_021(tiny, report):
    """vLLM 0.21 pads slot_mapping with -1 (0.24: the null slot 0); stale block ids stay in padded rows."""
    m = tiny("gqa4x2")
    prompts = prompts_for(m.config.vocab_size, (4, 11, 6))
    results = emulate(m.path, prompts, [4, 2, 5], block_size=8, prefill_bucket=8, max_num_seqs=2,
                      max_model_len=32, pad_slot=-1)
    check_against(m.hf, prompts, results, report, "gqa4x2 pad -1")


@pytest.mark.parametrize("layout", ["original", "hf-layout"])
def test_golden_greedy_generation(report, layout):
    """Zyphra's original implementation: the golden prompts' 8 greedy tokens and their step logits. The
    HF-layout twin is built with the original's router-norm epsilon (1e-6) in its config."""
    golden = load_file(GOLDEN_DIR / "zaya1-original-gqa" / "golden.safetensors")
    path = GOLDEN_DIR / "zaya1-original-gqa" / ("" if layout == "original" else "hf-layout")
    prompts = golden["b_prompt_ids"].tolist()
    overrides = {} if layout == "original" else {"router_norm_eps": 1e-6}
    results = emulate(path, prompts, 8, block_size=16, prefill_bucket=8, max_model_len=32,
                      config_overrides=overrides)
    for row, result in enumerate(results):
        assert result.tokens == golden["b_generated_ids"][row].tolist()
        report(f"native golden gqa {layout} row {row}", max_diff(result.logits, golden["b_step_logits"][row]))
        assert max_diff(result.logits, golden["b_step_logits"][row]) <= TOL


@pytest.mark.parametrize("tp", [1, 4])
def test_prefix_cache_resumes_exactly(tiny, report, tp):
    """Shared prefixes shorter than, equal to and longer than one block, several blocks, and a cached prefix
    read by a batch: logits equal to the uncached run (and to upstream), with the cached token counts
    prefix caching must give (whole blocks, never the prompt's last token)."""
    m = tiny("gqa8x2")
    base = prompts_for(m.config.vocab_size, (40,), seed=1)[0]
    prompts = [base[:20], base[:5] + [7, 8], base[:8] + [9], base[:8], base[:13] + [4], base[:33] + [5, 6],
               base[:35], base[:24] + [3]]
    kwargs = dict(tp_degree=tp, block_size=8, prefill_bucket=8, max_num_seqs=3, max_model_len=64)
    cached = emulate(m.path, prompts, 4, prefix_cache=True, **kwargs)
    plain = emulate(m.path, prompts, 4, **kwargs)
    # whole cached blocks, never a prompt's last token (base[:8] recomputes its one block)
    assert [r.cached_tokens for r in cached] == [0, 0, 8, 0, 8, 16, 32, 24]
    assert [r.cached_tokens for r in plain] == [0] * len(prompts)
    worst = max(max_diff(c.logits, p.logits) for c, p in zip(cached, plain))
    assert report(f"native prefix cache vs uncached tp{tp}", worst) <= TOL
    assert all(c.tokens == p.tokens for c, p in zip(cached, plain))
    check_against(m.hf, prompts, cached, report, f"prefix cache tp{tp}")


def test_state_pages_never_write_the_zero_page():
    """A live row whose state block id is invalid (-1, the null block 0, or past the pool) writes the sink: the
    zero page every fresh sequence reads stays zero."""
    from zaya1.vllm_neuron import paged

    # 10 pages: 8 is the zero page, 9 the sink; row 1's first block id (12) is past the pool
    read, write = paged.state_pages(torch.tensor([[3, -1, 0], [12, 4, 5]]), 4, torch.tensor([0, 2]),
                                    torch.tensor([9, 7]), 3, torch.tensor([True, True]), 10)
    assert read.tolist() == [8, 8]
    assert write.tolist() == [[3, 9, 9], [9, 4, 5]]


def test_prefix_cache_with_state_cuts_inside_a_prefill_segment(tiny, report):
    """Prefill segments of 12 tokens over blocks of 8: a segment keeps the state at a block end in its middle,
    which a later prompt resumes from; a block completed while decoding is reused too (its hash covers the
    generated tokens, fed back by teacher forcing)."""
    m = tiny("gqa4x2")
    base = prompts_for(m.config.vocab_size, (40,), seed=3)[0]
    first = emulate(m.path, [base[:11]], 6, block_size=8, prefill_bucket=12, max_model_len=64)[0]
    grown = base[:11] + first.tokens[:5]  # 16 tokens: block 1 was completed by decode steps
    prompts = [base[:11], base[:10] + [3], grown + [4]]
    results = emulate(m.path, prompts, [6, 3, 3], block_size=8, prefill_bucket=12, max_num_seqs=1, max_model_len=64,
                      prefix_cache=True, teacher_forcing=[first.tokens, [], []])
    assert [r.cached_tokens for r in results] == [0, 8, 16]
    for prompt, result, forced in zip(prompts, results, [first.tokens, None, None]):
        fed = forced[:len(result.tokens) - 1] if forced else result.tokens[:-1]
        ref = m.hf(torch.tensor([prompt + fed])).logits[0, len(prompt) - 1:]
        assert report("native prefix cache, state cut inside a segment", max_diff(result.logits, ref)) <= TOL


def test_prefix_cache_with_a_state_page_every_two_blocks(tiny, report):
    """state_block = 2 blocks: half the state pages; a prefix is reused up to its last even block boundary."""
    m = tiny("gqa4x2")
    base = prompts_for(m.config.vocab_size, (40,), seed=2)[0]
    prompts = [base[:30], base[:26] + [3], base[:20], base[:12] + [5]]
    results = emulate(m.path, prompts, 3, block_size=8, prefill_bucket=8, max_num_seqs=2, max_model_len=64,
                      prefix_cache=True, state_block=16)
    assert [r.cached_tokens for r in results] == [0, 16, 16, 0]
    check_against(m.hf, prompts, results, report, "prefix cache state every 2 blocks")


def test_kv_spec_and_state_size(tiny):
    """Per rank: one paged attention layer and one CCA state of conv [C, K-1] + value [Cv] per layer; sliding
    layers declared as full attention (the model applies the window); the smallest block whose page holds
    the state."""
    m = tiny("sliding")
    cfg = m.ours.config
    with torch.device("meta"):
        model = ZayaNativeForCausalLM.from_configs(m.config, None)
    spec = model.get_kv_spec()
    assert [s.sliding_window_size for s in spec.layers] == [None, None, None]
    channels = (cfg.num_attention_heads + cfg.num_key_value_heads) * cfg.head_dim
    assert spec.recurrent_layers[0].shapes == ((channels, 2), (cfg.num_key_value_heads * cfg.head_dim,))
    assert state_bytes(spec.recurrent_layers[0]) == (channels * 2 + cfg.num_key_value_heads * cfg.head_dim) * 4
    block = min_block_size(spec)
    assert kv_page_bytes(spec.layers[0], block) >= state_bytes(spec.recurrent_layers[0])
    assert kv_page_bytes(spec.layers[0], block - 1) < state_bytes(spec.recurrent_layers[0])
    with pytest.raises(ConfigError, match="too small"):
        emulate(m.path, [[5, 6]], 1, block_size=block - 1, max_model_len=8 * (block - 1))


def test_bind_kv_cache_refuses_a_non_page_major_layout(tiny):
    m = tiny("gqa4x2")
    with torch.device("meta"):
        model = ZayaNativeForCausalLM.from_configs(m.config)
    with pytest.raises(ConfigError, match="kv_cache_page_major"):
        model.bind_kv_cache({"layers.0.self_attn": [torch.zeros(1), torch.zeros(1)]})


def test_emulate_refuses_bad_requests(tiny):
    m = tiny("gqa4x2")
    with pytest.raises(InputError, match="max_model_len"):
        emulate(m.path, [[5] * 30], 10, max_model_len=32)
    with pytest.raises(InputError, match="non-empty"):
        emulate(m.path, [[]], 1)
    with pytest.raises(InputError, match="tp_degree=1"):
        emulate(m.path, [[5]], 1, tp_degree=2, compile=True)


def test_sampler_matches_transformers_warpers():
    """temperature -> top-k -> top-p as transformers' logits warpers compute them (their order), per row;
    top_k off means the 256 best candidates (the plugin's limit); greedy rows take the argmax; u = 0 draws
    the most likely candidate."""
    transformers = upstream()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=gen) * 3
    params = torch.tensor([[-1, 1.0, 0.0], [40, 1.0, 0.7], [-1, 0.8, 1.3], [25, 0.6, 0.9]])
    scores, ids = candidate_scores(logits, params)
    for row in range(1, 4):
        top_k, top_p, temperature = params[row].tolist()
        warpers = [transformers.TemperatureLogitsWarper(temperature)]  # no top-k: the 256 best (stated limit)
        warpers += [transformers.TopKLogitsWarper(int(top_k) if top_k > 0 else 256)]
        warpers += [transformers.TopPLogitsWarper(top_p)] if top_p < 1 else []
        ref = logits[row:row + 1].clone()
        for warper in warpers:
            ref = warper(None, ref)
        expected = torch.softmax(ref, dim=-1)[0]
        got = torch.zeros(1000).index_add_(0, ids[row], torch.softmax(scores[row], dim=-1))
        assert max_diff(got, expected) <= 1e-6
    uniform = torch.tensor([0.5, 0.0, 0.999, 0.3])
    tokens = sample(logits, params, uniform=uniform)
    assert tokens[0] == logits[0].argmax() and tokens.dtype == torch.int32
    for row in range(1, 4):  # inverse CDF over the reference distribution, candidates in descending order
        probs = torch.zeros(1000).index_add_(0, ids[row], torch.softmax(scores[row], dim=-1))[ids[row]]
        drawn = int(torch.searchsorted(probs.cumsum(0), uniform[row], right=True).clamp_max(
            int(torch.isfinite(scores[row]).sum()) - 1))
        assert tokens[row] == ids[row, drawn]
    assert tokens[1] == ids[1, 0]  # u = 0: the most likely candidate


@pytest.mark.parametrize("version,generation", [("0.21.0.1.0.0", "native"), ("0.24.1", "native"),
                                                ("0.5.3", "nxdi"), ("0.2.0", "nxdi"), (None, None)])
def test_one_entry_point_for_both_plugin_generations(monkeypatch, version, generation):
    """vllm-neuron >= 0.21 gets the native model in vLLM's registry (a recording stand-in for vLLM's
    ModelRegistry here: vLLM is not installed), older releases or none the NxDI registration; never both."""
    import importlib.metadata
    import sys
    from types import SimpleNamespace

    from zaya1 import vllm_plugin

    assert any(e.name == "zaya1" and e.value == "zaya1.vllm_plugin:register"
               for e in importlib.metadata.entry_points(group="vllm.general_plugins"))

    def installed(name):
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    calls = []
    registry = SimpleNamespace(register_model=lambda arch, target: calls.append(("vllm", arch, target)))
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(ModelRegistry=registry))
    monkeypatch.setattr(vllm_plugin.importlib.metadata, "version", installed)
    monkeypatch.setattr(vllm_plugin.nxdi_plugin, "register", lambda: calls.append(("nxdi",)))
    assert vllm_plugin.vllm_neuron_generation() == generation
    vllm_plugin.register()
    if generation == "native":
        assert calls == [("vllm", "ZayaForCausalLM", "zaya1.vllm_neuron.model:ZayaNativeForCausalLM")]
        module, name = calls[0][2].split(":")
        cls = getattr(importlib.import_module(module), name)
        assert cls.is_hybrid and cls.kv_cache_page_major and callable(cls.from_configs)
    else:
        assert calls == [("nxdi",)]


def test_vllm_hybrid_hooks_give_the_per_rank_state(tiny):
    """vLLM sizes state pages of hybrid models from the registered class's hooks: they agree with get_kv_spec."""
    from types import SimpleNamespace

    m = tiny("gqa8x2")
    for tp in (1, 2, 4):
        vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_config=m.config, dtype=torch.bfloat16),
                                      parallel_config=SimpleNamespace(tensor_parallel_size=tp))
        comm = None if tp == 1 else thread_comms(tp)[0]
        with torch.device("meta"):
            model = ZayaNativeForCausalLM.from_configs(m.config, comm=comm)
        assert ZayaNativeForCausalLM.get_mamba_state_shape_from_config(vllm_config) == \
            model.get_kv_spec().recurrent_layers[0].shapes
        assert ZayaNativeForCausalLM.get_mamba_state_dtype_from_config(vllm_config) == (torch.bfloat16,) * 2


def test_emulate_refuses_sizes_the_plugin_would_not_have(tiny):
    m = tiny("gqa4x2")
    with pytest.raises(ConfigError, match="multiples of block_size"):
        emulate(m.path, [[5, 6]], 1, block_size=8, max_model_len=60)
    with pytest.raises(ConfigError, match="multiples of block_size"):
        emulate(m.path, [[5, 6]], 1, block_size=8, max_model_len=64, context_buckets=[20, 64])
    with pytest.raises(InputError, match="prompt"):
        emulate(m.path, [[5, m.config.vocab_size]], 1, max_model_len=64)
    with pytest.raises(InputError, match="one entry per prompt"):
        emulate(m.path, [[5], [6]], 1, max_model_len=64, teacher_forcing=[[1]])


RANK_PEAK_SCRIPT = r"""
import json, sys, types, torch
from zaya1 import ZayaConfig
from zaya1.vllm_neuron import ZayaNativeForCausalLM

def peak_rss():  # this process image's high-water mark
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM")).split()[1])

raw = ZayaConfig.from_pretrained(sys.argv[1]).to_dict()
with torch.device("meta"):
    model = ZayaNativeForCausalLM.from_configs(raw, types.SimpleNamespace(torch_dtype=torch.float32),
                                               comm=types.SimpleNamespace(world_size=4, rank=1))
before = peak_rss()
model.load_weights(sys.argv[1])
state = model.lm.state_dict()
with torch.device("meta"):  # the canonical tensors' sizes
    whole = ZayaNativeForCausalLM.from_configs(raw, types.SimpleNamespace(torch_dtype=torch.float32))
print(json.dumps({"growth": peak_rss() - before, "shard": sum(t.numel() * t.element_size() for t in state.values()),
                  "largest": max(t.numel() * t.element_size() for t in whole.lm.state_dict().values())}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_load_weights_holds_one_rank_not_the_checkpoint(tmp_path):
    """A rank's process reads the checkpoint one canonical tensor at a time: its peak memory grows by its
    shard plus a few times the largest canonical tensor (the one read, the file pages mapped while reading it,
    its copy, a shard cut from it), not by the checkpoint (a rank of tp 4 on a ~480 MB float32 checkpoint of 8 layers;
    the 74B with fp8 experts would otherwise need ~77 GB in each of a trn2.3xlarge's 4 rank processes)."""
    size = write_large_checkpoint(tmp_path, layers=8, expert_width=512)
    run = subprocess.run([sys.executable, "-c", RANK_PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [str(Path(zaya1.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])))
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"rank 1 of 4: peak RSS growth {r['growth'] / 2**20:.0f} MiB, shard {r['shard'] / 2**20:.0f} MiB, "
          f"largest tensor {r['largest'] / 2**20:.0f} MiB, checkpoint {size / 2**20:.0f} MiB")
    assert r["shard"] < 0.3 * size and r["largest"] < 0.1 * size
    assert r["growth"] <= r["shard"] + 5 * r["largest"] < 0.65 * size  # reading it whole: 1.37 x the size


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_load_weights_across_checkpoint_files(tmp_path, layout):
    """A sharded checkpoint whose canonical tensors are assembled from keys in different files (the two
    halves of a value projection, split over two files): each rank of tp 4 (KV heads replicated, group mean
    queries) loads exactly the plan's shard of the whole model."""
    from safetensors.torch import save_file

    from zaya1 import ZayaForCausalLM
    from zaya1.sharding import rank_state_dict
    from zaya1.vllm_neuron.runner import load_ranks

    source = GOLDEN_DIR / "zaya1-original-gqa" / ("hf-layout" if layout == "hf" else "")
    tensors = load_file(str(source / "model.safetensors"))
    names = sorted(tensors)
    split = {name: "a" if i % 2 else "b" for i, name in enumerate(names)}  # interleaved: halves apart
    halves = [n for n in names if "v_proj_" in n or "val_proj" in n][:2]
    assert split[halves[0]] != split[halves[1]]
    for part in "ab":
        save_file({n: t for n, t in tensors.items() if split[n] == part}, str(tmp_path / f"model-{part}.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f"model-{split[n]}.safetensors" for n in names}}))
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    whole = ZayaForCausalLM.from_pretrained(source).state_dict()
    for rank, model in enumerate(load_ranks(tmp_path, 4, torch.float32)):
        expected = rank_state_dict(whole, model.config, 4, rank)
        got = model.lm.state_dict()
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in got), rank
