"""CPU bf16 kernels (kernels.py) against F.linear, the benchmark's analytic model, and a tiny end-to-end run."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zaya1 import ZayaForCausalLM, kernels
from zaya1.tools.bench import main
from zaya1.tools.bench.measure import decode_bytes
from zaya1.tools.bench.synthetic import synthetic_hf_config
from zaya1.config import ZayaConfig
from zaya_testlib import force_bf16_path, upstream

ROOT = Path(__file__).parents[2]
TINY_HF = ROOT / "test" / "data" / "golden" / "zaya1-original-tiny" / "hf-layout"


@pytest.fixture
def emulated(monkeypatch):
    """The default path of a CPU without native bf16 (AVX2-only or AVX-512 without bf16), on any CPU."""
    force_bf16_path(monkeypatch, native=False)


@pytest.fixture(params=["emulated", "native"])
def fast_path(request, monkeypatch):
    """Either fast path, on any CPU: emulated-bf16 kernels, or native (mv / swapped GEMM / F.linear). On a
    CPU without bf16 units the native path's products are oneDNN's emulated ones: same numerics."""
    force_bf16_path(monkeypatch, native=request.param == "native")


CPUINFO = "model name\t: {model}\nflags\t\t: fpu sse2 avx {flags}\n"


@pytest.mark.parametrize("model,flags,env,native", [
    ("AMD EPYC 7R13 (Zen 3)", "avx2 fma", {}, False),
    ("Intel Xeon Platinum 8175M (Skylake-SP)", "avx2 avx512f avx512bw", {}, False),
    ("Intel Xeon Platinum 8488C (Sapphire Rapids)", "avx2 avx512f avx512_bf16 amx_bf16 amx_tile", {}, True),
    ("AMD EPYC 9R14 (Zen 4)", "avx2 avx512f avx512_bf16", {}, True),
    ("Sapphire Rapids capped by oneDNN", "avx2 avx512f avx512_bf16 amx_bf16", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ("Sapphire Rapids capped at AVX512_CORE_AMX", "avx2 avx512f avx512_bf16 amx_bf16",
     {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, True),
])
def test_cpu_features_choose_the_kernels(model, flags, env, native):
    features = kernels.cpu_features(CPUINFO.format(model=model, flags=flags), "x86_64", env)
    assert features["model"] == model and features["native_bf16"] == native
    assert kernels._emulated_bf16(features) == (not native)
    assert not kernels._emulated_bf16(kernels.cpu_features(CPUINFO.format(model=model, flags=flags), "aarch64", env))
    assert not kernels._emulated_bf16(kernels.cpu_features("", "x86_64", env))  # unknown CPU: F.linear


def test_exact_switch_selects_f_linear(emulated):
    weight, x = torch.randn(300, 64).bfloat16(), torch.randn(3, 64).bfloat16()
    assert kernels.use_cpu_bf16_kernels(x, weight)
    kernels.use_exact_kernels()  # undone by the fixture's monkeypatch of EXACT
    assert not kernels.use_cpu_bf16_kernels(x, weight) and "exact" in kernels.kernel_mode()
    assert torch.equal(kernels.linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize("rows", [1, 3, kernels.FP32_MIN_ROWS, kernels.SWAPPED_MAX_ROWS, 40])
def test_bf16_linear_matches_f_linear(fast_path, rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(3000, 256, generator=gen).to(torch.bfloat16)
    x = torch.randn(2, rows, 256, generator=gen).to(torch.bfloat16)
    exact = x.double() @ weight.double().t()
    ours, ref = kernels.linear(x, weight), F.linear(x, weight)
    assert ours.shape == ref.shape and ours.dtype == torch.bfloat16
    # both accumulate in fp32 and round once to bf16: each is within one bf16 rounding of the exact product
    scale = exact.abs().max()
    assert (ours.double() - exact).abs().max() <= 2 ** -7 * scale
    assert (ours.double() - ref.double()).abs().max() <= 2 ** -7 * scale


def test_workspace_made_in_inference_mode_serves_later_calls(emulated, monkeypatch):
    monkeypatch.setattr(kernels._workspace, "buffer", None, raising=False)
    weight, x = torch.randn(300, 64).bfloat16(), torch.randn(kernels.FP32_MIN_ROWS, 64).bfloat16()
    with torch.inference_mode():
        first = kernels.linear(x, weight)
    assert torch.equal(kernels.linear(x, weight), first)  # outside inference mode, same workspace


def test_fp32_block_path_splits_large_weights(emulated, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 256 * 100)  # 100-row blocks
    weight = torch.randn(1234, 256).to(torch.bfloat16)
    x = torch.randn(20, 256).to(torch.bfloat16)
    assert torch.allclose(kernels.linear(x, weight).float(), F.linear(x.float(), weight.float()), rtol=1e-2,
                          atol=1e-2)


def test_fp32_and_biased_linears_are_plain_f_linear(emulated):
    weight, bias = torch.randn(64, 32), torch.randn(64)
    x = torch.randn(5, 32)
    assert torch.equal(kernels.linear(x, weight), F.linear(x, weight))
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    assert torch.equal(kernels.linear(xb, wb, bb), F.linear(xb, wb, bb))


def test_bf16_generation_with_cpu_kernels_matches_reference_path(emulated, monkeypatch):
    model = ZayaForCausalLM.from_pretrained(TINY_HF, dtype=torch.bfloat16)
    prompt = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    ours = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    monkeypatch.setattr(kernels, "EMULATED_BF16", False)
    monkeypatch.setattr(kernels, "NATIVE_BF16", False)  # F.linear everywhere
    ref = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert (ours == ref).float().mean() > 0.9  # bf16: rounding may flip a near-tie token


def test_decode_bytes_match_the_architecture_doc():
    parts = decode_bytes(ZayaConfig(), batch=1, context=0, itemsize=2)  # ZAYA1-8B, 40 layers, bf16
    assert parts["lm_head"] == 1_074_266_112
    assert parts["attention"] == 446_054_560
    assert parts["router"] - 40 * 17 * 4 == 52_878_848  # the doc leaves out the fp32 balancing biases
    assert parts["experts"] == 1_006_632_960
    assert parts["norms"] == 1_650_688


def test_synthetic_config_is_the_real_width_model():
    cfg = ZayaConfig.from_dict(synthetic_hf_config(layers=2))
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2048, 8, 2, 128)
    assert (cfg.num_experts, cfg.moe_intermediate_size, cfg.router_hidden_size) == (16, 2048, 256)
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.layout) == (262272, 2, "hf")


def test_bench_end_to_end_on_a_tiny_checkpoint(tmp_path, capsys):
    upstream()
    out = tmp_path / "perf.json"
    assert main(["--model", str(TINY_HF), "--backends", "cpu,neuron", "--batches", "1,2", "--new-tokens", "3",
                 "--repeats", "1", "--compile", "off", "--bandwidth-mb", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "neuron: skipped" in text and "zaya1/hf" in text
    assert f"CPU features {'/'.join(kernels.CPU['isa']) or '-'}, torch capability {kernels.CPU['torch']}" in text
    records = json.loads(out.read_text())
    fractions = [r[side] for r in records if "roofline" in r["metric"] for side in ("zaya1", "hf")]
    assert fractions and all(0 < f <= 1 for f in fractions)
    hf_fraction = {(r["metric"], r["batch"]): r["hf"] for r in records if r["metric"] in ("ttft_roofline",
                                                                                          "decode_roofline")}
    ceilings = {(r["metric"].replace("_speedup_ceiling", "_roofline"), r["batch"]): r["speedup"]
                for r in records if r["metric"].endswith("_speedup_ceiling")}
    assert set(ceilings) == {k for k, f in hf_fraction.items() if f < 1}
    assert all(ceilings[k] == pytest.approx(1 / hf_fraction[k]) and ceilings[k] > 1 for k in ceilings)
    assert all(r["zaya1"] is None for r in records if r["metric"].endswith("_speedup_ceiling"))
    assert {r["metric"] for r in records} >= {"bandwidth_read_spread", "contended", "load_average_before"}
    assert {"metric", "batch", "prompt_len", "zaya1", "hf", "ratio", "unit"} <= set(records[0])
    decode = {r["batch"]: r for r in records if r["metric"] == "decode"}
    assert set(decode) == {1, 2} and all(r["zaya1"] > 0 and r["hf"] > 0 for r in decode.values())
