"""CPU bf16 products (kernels.py, each forced) against F.linear, the benchmark's analytic model, and a tiny
end-to-end run."""
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
from zaya_testlib import force_product, upstream

ROOT = Path(__file__).parents[2]
TINY_HF = ROOT / "test" / "data" / "golden" / "zaya1-original-tiny" / "hf-layout"


@pytest.fixture(params=["mv", "swapped", "fp32", "fused"])
def product(request, monkeypatch):
    """Each alternative product forced wherever it is a candidate, on any CPU (what another CPU's
    measurements may choose)."""
    force_product(monkeypatch, request.param)
    return request.param


def test_exact_switch_selects_f_linear(monkeypatch):
    force_product(monkeypatch, "fp32")
    weight, x = torch.randn(300, 64).bfloat16(), torch.randn(3, 64).bfloat16()
    assert kernels.measured(x, weight)
    kernels.use_exact_kernels()  # undone by force_product's monkeypatch of EXACT
    assert not kernels.measured(x, weight) and "exact" in kernels.kernel_mode()
    assert torch.equal(kernels.linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize("rows", [1, 3, kernels.MV_MAX_ROWS, kernels.FUSED_MAX_ROWS, kernels.SWAPPED_MAX_ROWS, 40])
def test_bf16_linear_matches_f_linear(product, rows):
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
    assert torch.equal(kernels.linear(x, weight), ours)  # a given choice is deterministic


def test_workspace_made_in_inference_mode_serves_later_calls(monkeypatch):
    force_product(monkeypatch, "fp32")
    monkeypatch.setattr(kernels._workspace, "buffer", None, raising=False)
    weight, x = torch.randn(300, 64).bfloat16(), torch.randn(4, 64).bfloat16()
    with torch.inference_mode():
        first = kernels.linear(x, weight)
    assert torch.equal(kernels.linear(x, weight), first)  # outside inference mode, same workspace


def test_fp32_block_path_splits_large_weights(monkeypatch):
    force_product(monkeypatch, "fp32")
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 256 * 100)  # 100-row blocks
    weight = torch.randn(1234, 256).to(torch.bfloat16)
    x = torch.randn(20, 256).to(torch.bfloat16)
    assert torch.allclose(kernels.linear(x, weight).float(), F.linear(x.float(), weight.float()), rtol=1e-2,
                          atol=1e-2)


def test_fp32_and_biased_linears_are_plain_f_linear(monkeypatch):
    force_product(monkeypatch, "fp32")
    weight, bias = torch.randn(64, 32), torch.randn(64)
    x = torch.randn(5, 32)
    assert torch.equal(kernels.linear(x, weight), F.linear(x, weight))
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    assert torch.equal(kernels.linear(xb, wb, bb), F.linear(xb, wb, bb))


def test_bf16_generation_with_each_product_matches_f_linear(product, monkeypatch):
    model = ZayaForCausalLM.from_pretrained(TINY_HF, dtype=torch.bfloat16)
    prompt = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    ours = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    force_product(monkeypatch, "linear")  # F.linear everywhere
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
    assert "neuron: skipped" in text and "zaya1 vs hf" in text
    assert f"CPU features {'/'.join(kernels.CPU['isa']) or '-'}, torch capability {kernels.CPU['torch']}" in text
    assert "zaya1 kernels: measured per product shape" in text
    records = json.loads(out.read_text())
    speed = [r for r in records if r["metric"] in ("ttft", "decode")]
    assert {(r["metric"], r["batch"]) for r in speed} == {("ttft", 1), ("ttft", 2), ("decode", 1), ("decode", 2)}
    for r in speed:  # the floor first: at most 1 of it, and consistent with the measured figure
        assert r["floor"] > 0 and all(0 < r[side] <= 1 for side in ("zaya1_of_floor", "hf_of_floor"))
        measured = r["floor"] / r["zaya1"] if r["metric"] == "ttft" else r["zaya1"] / r["floor"]
        assert r["zaya1_of_floor"] == pytest.approx(min(measured, 1.0))
        assert r["speedup"] == pytest.approx(r["hf"] / r["zaya1"] if r["metric"] == "ttft" else r["zaya1"] / r["hf"])
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split()[3:] == ["unit", "floor", "zaya1", "of", "floor", "hf", "of", "floor", "zaya1", "vs", "hf"]
    assert {r["metric"] for r in records} >= {"bandwidth_read_spread", "contended", "load_average_before"}
    assert {"metric", "batch", "prompt_len", "floor", "zaya1", "zaya1_of_floor", "hf", "hf_of_floor", "ratio",
            "unit"} <= set(records[0])
    decode = {r["batch"]: r for r in records if r["metric"] == "decode"}
    assert set(decode) == {1, 2} and all(r["zaya1"] > 0 and r["hf"] > 0 for r in decode.values())
