"""Quantized-expert checkpoints (the format of ZAYA1-8B-FP8-Experts / -MXFP4-Experts): tiny upstream models
whose experts are quantized and written by the compressed-tensors package as llm-compressor writes them (one
Linear module per expert projection, weight-only or FP8_DYNAMIC schemes, ``ignore`` everything that is not an
expert), loaded by zaya1 and by transformers + compressed-tensors.

Upstream transformers has no ZAYA entry in its conversion mapping, so it cannot merge per-expert modules by
itself: the reference registers for "zaya" the mapping it uses for every Qwen2-style MoE
(``experts.*.gate_proj`` + ``up_proj`` -> ``gate_up_proj``, ``down_proj``); its compressed-tensors quantizer
then dequantizes the experts on load (``CompressedTensorsDequantize``). Needs compressed-tensors (the test
extra); skipped without it unless ZAYA1_REQUIRE_UPSTREAM=1."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import zaya1
from zaya1 import simulated_tp
from zaya1.checkpoint import KEY_TABLES
from zaya_testlib import (IGNORE, TOL, bf16_state, build_hf_checkpoint, compressed_tensors, hf_config, load_hf,
                          max_diff, save_tokenizer, transformers_merges_zaya_experts, write_quantized)

pytestmark = pytest.mark.usefixtures("inference")

# name: (compressed-tensors preset whose weights, and input activations where dynamic, are used; zaya1's format)
SCHEMES = {"fp8-channel": ("FP8_DYNAMIC", "fp8"), "fp8-tensor": ("FP8", "fp8"), "mxfp4": ("MXFP4A16", "mxfp4")}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A tiny upstream model whose widths suit every format (mxfp4 groups of 32 columns)."""
    compressed_tensors()
    path = tmp_path_factory.mktemp("dense")
    return build_hf_checkpoint(path, hf_config("gqa8x2", moe_intermediate_size=64), seed=5)


@pytest.fixture(scope="module", params=SCHEMES)
def quantized(request, dense, tmp_path_factory):
    preset, kind = SCHEMES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    write_quantized(dense, path, preset)
    with transformers_merges_zaya_experts():
        reference = {torch.float32: load_hf(path), torch.bfloat16: load_hf(path, dtype=torch.bfloat16)}
    for param in reference[torch.float32].model.parameters():  # transformers leaves mxfp4 experts in the
        param.data = param.data.float()  # decompressor's bf16 under dtype=float32: upcast (exact)
    return request.param, kind, path, reference


def prompts(vocab: int, seed: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_recognised(quantized):
    name, kind, path, _ = quantized
    raw = json.loads((path / "config.json").read_text())["quantization_config"]
    assert raw["ignore"] == [IGNORE] and raw["quant_method"] == "compressed-tensors"
    assert zaya1.ZayaConfig.from_pretrained(path).expert_quantization == kind


def test_experts_stay_quantized_and_dequantize_like_transformers(quantized):
    """In memory: the stored codes (fp8 e4m3: 1 byte per weight; mxfp4: half a byte plus a 1-byte scale per
    32) and no dense expert tensor; dequantized: bit-identical to transformers' experts."""
    name, kind, path, reference = quantized
    ours = zaya1.ZayaForCausalLM.from_pretrained(path)
    experts = ours.model.layers[0].mlp.experts
    assert not any(".experts." in n for n, _ in ours.named_parameters())
    codes = {"fp8": torch.float8_e4m3fn, "mxfp4": torch.uint8}[kind]
    assert experts.gate_up_proj.codes.dtype == experts.down_proj.codes.dtype == codes
    c = ours.config
    stored = sum(b.numel() * b.element_size() for n, b in ours.named_buffers() if ".experts." in n)
    weights = c.num_hidden_layers * c.num_experts * 3 * c.hidden_size * c.moe_intermediate_size
    rows = c.num_hidden_layers * c.num_experts * (2 * c.moe_intermediate_size + c.hidden_size)
    assert stored == {"fp8": weights + 4 * rows, "mxfp4": weights // 2 + weights // 32}[kind]  # fp8: fp32 row scales
    for i, layer in enumerate(reference[torch.float32].model.layers):
        for proj in ("gate_up_proj", "down_proj"):
            ours_w = getattr(ours.model.layers[i].mlp.experts, proj)[torch.arange(ours.config.num_experts)]
            assert torch.equal(ours_w, getattr(layer.mlp.experts, proj).data), (i, proj)


def test_logits_match_transformers(quantized, report):
    name, kind, path, reference = quantized
    ours, hf = zaya1.ZayaForCausalLM.from_pretrained(path), reference[torch.float32]
    ids = prompts(ours.config.vocab_size, seed=1)
    assert report(f"{name} experts full-sequence", max_diff(ours(ids).logits, hf(ids).logits)) <= TOL
    ours.dispatch = "blockwise"  # the traced prefill's static dispatch reads the same dequantized experts
    assert report(f"{name} experts blockwise dispatch", max_diff(ours(ids).logits, hf(ids).logits)) <= TOL
    ours.dispatch = "grouped"
    expected = hf.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(ids, max_new_tokens=8), expected)


def save_twin(model, path, layout: str, dense: bool) -> None:
    """``model``'s weights as a checkpoint of ``layout`` under zaya1's key tables: its experts as stored, or
    dequantized (float32) into a dense checkpoint."""
    config = model.config.replace(layout=layout, expert_quantization=None if dense else model.config.expert_quantization)
    canonical = model.state_dict()
    if dense:
        for i, layer in enumerate(model.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                canonical[f"model.layers.{i}.mlp.experts.{proj}"] = getattr(layer.mlp.experts, proj)[
                    torch.arange(config.num_experts)]
    tensors = {key: (canonical[target] if index is None else canonical[target][index]).contiguous()
               for key, (target, index) in KEY_TABLES[layout](config).items()}
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(config.to_json())


def test_bfloat16_equals_the_dense_model(quantized, tmp_path):
    """zaya1's bf16 path on quantized experts computes exactly what it computes on a dense checkpoint holding
    the dequantized experts (whose bf16 accuracy the dense tests hold to the standard): the experts are
    dequantized to bf16 as transformers' bf16 load does, and nothing else changes."""
    name, kind, path, _ = quantized
    ours = zaya1.ZayaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    assert ours.model.layers[0].mlp.experts.gate_up_proj.codes.dtype != torch.bfloat16  # the cast kept the codes
    save_twin(zaya1.ZayaForCausalLM.from_pretrained(path), tmp_path, "hf", dense=True)
    dense = zaya1.ZayaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ids = prompts(ours.config.vocab_size, seed=2, batch=4, length=16)
    assert torch.equal(ours(ids).logits, dense(ids).logits)
    assert torch.equal(ours.generate(ids, max_new_tokens=6), dense.generate(ids, max_new_tokens=6))


def test_original_layout_twin(quantized, tmp_path):
    """The same quantized experts under the original layout's per-expert names (linear_fc1 = gate and up)
    give the same logits as the HF-layout checkpoint."""
    name, kind, path, _ = quantized
    hf_layout = zaya1.ZayaForCausalLM.from_pretrained(path)
    save_twin(hf_layout, tmp_path, "original", dense=False)
    twin = zaya1.ZayaForCausalLM.from_pretrained(tmp_path)
    assert twin.config.layout == "original" and twin.config.expert_quantization == kind
    ids = prompts(twin.config.vocab_size, seed=3)
    assert torch.equal(twin(ids).logits, hf_layout(ids).logits)


@pytest.mark.parametrize("tp", [2])
def test_simulated_tp(quantized, report, tp):
    """Quantized experts split over ranks like the weights they encode (codes, row scales, mxfp4 scale groups)."""
    name, kind, path, reference = quantized
    model = simulated_tp.from_pretrained(path, dtype=torch.float32, tp_degree=tp)
    assert model.ranks[0].model.layers[0].mlp.experts.down_proj.codes.dtype != torch.float32
    ids = prompts(model.config.vocab_size, seed=4)
    assert report(f"{name} experts tp={tp}", max_diff(model(ids).logits, reference[torch.float32](ids).logits)) <= TOL


def test_native_vllm_neuron_model(quantized, report):
    """The native vLLM Neuron model (zaya1.vllm_neuron) on the quantized checkpoint, two simulated ranks,
    driven by the runner emulation: the experts stay as stored on every rank and the logits of each
    generated token match transformers + compressed-tensors (teacher-forced), greedy tokens equal."""
    from zaya1.vllm_neuron import emulate
    from zaya1.vllm_neuron.runner import load_ranks

    name, kind, path, reference = quantized
    rank = load_ranks(path, 2, None)[1]
    assert rank.lm.model.layers[0].mlp.experts.gate_up_proj.codes.dtype != torch.float32
    ids = prompts(rank.config.vocab_size, seed=6).tolist()
    worst = 0.0
    for prompt, result in zip(ids, emulate(path, ids, 4, tp_degree=2, block_size=16, prefill_bucket=8,
                                          max_model_len=32)):
        ref = reference[torch.float32](torch.tensor([prompt + result.tokens[:-1]])).logits[0, len(prompt) - 1:]
        assert result.tokens == ref.argmax(-1).tolist()
        worst = max(worst, max_diff(result.logits, ref))
    assert report(f"{name} experts, native vLLM-Neuron model tp 2", worst) <= TOL


def test_native_decode_graph_reads_one_byte_per_fp8_expert_weight(quantized, dense):
    """The native model's decode graph in StableHLO (torch-mlir), fp8 experts against the same model with
    bf16 experts: the experts a step gathers shrink from 2 bytes to 1 per weight, plus the fp32 row scales
    (per layer and row: 3 H I bytes fewer, 4 (2 I + H) more); nothing else changes."""
    name, kind, path, _ = quantized
    if kind != "fp8":
        pytest.skip("the traced graph multiplies fp8 codes directly; mxfp4 experts are dequantized when gathered")
    pytest.importorskip("torch_mlir", reason="torch-mlir (the test extra) imports graphs to StableHLO")
    from zaya1.vllm_neuron.runner import load_ranks
    from zaya1.vllm_neuron.stablehlo import Bucket, export_stablehlo, inventory, weights

    bucket = Bucket(rows=2, query=1, context=64)
    graphs = {}
    for label, checkpoint in (("fp8", path), ("bf16", dense.config._name_or_path)):
        model = load_ranks(checkpoint, 1, torch.bfloat16)[0]
        graphs[label] = inventory(export_stablehlo(model, bucket), len(weights(model)))
    c = model.config
    per_row = 3 * c.hidden_size * c.moe_intermediate_size - 4 * (2 * c.moe_intermediate_size + c.hidden_size)
    assert graphs["fp8"].custom_calls == 0 and graphs["fp8"].dynamic_dims == 0
    assert graphs["bf16"].gathered_bytes - graphs["fp8"].gathered_bytes == c.num_hidden_layers * bucket.rows * per_row
    assert graphs["bf16"].weight_bytes == graphs["fp8"].weight_bytes


# ---------------------------------------------------------------------------------------------- fp8 from bf16
@pytest.fixture(scope="module")
def bf16_pair(dense, tmp_path_factory):
    """The tiny model as a bf16 checkpoint, and the FP8_DYNAMIC checkpoint compressed-tensors writes from it
    (channel scales, as llm-compressor quantizes a bf16 model); transformers + compressed-tensors loads the
    second as the reference."""
    path = tmp_path_factory.mktemp("dense-bf16")
    save_file(bf16_state(dense), str(path / "model.safetensors"))
    dense.config.save_pretrained(path)
    fp8 = tmp_path_factory.mktemp("fp8-from-bf16")
    write_quantized(dense, fp8, "FP8_DYNAMIC")
    with transformers_merges_zaya_experts():
        reference = load_hf(fp8)
    return path, fp8, reference


def test_fp8_quantized_at_load_equals_compressed_tensors(bf16_pair, report):
    """``expert_dtype="fp8"`` on a bf16 checkpoint: the codes and row scales compressed-tensors writes from the
    same weights, bit for bit, in both layouts; logits as transformers + compressed-tensors gives on that
    checkpoint; the experts held in fp8."""
    path, fp8, reference = bf16_pair
    ours = zaya1.ZayaForCausalLM.from_pretrained(path, expert_dtype="fp8")
    stored = zaya1.ZayaForCausalLM.from_pretrained(fp8)
    assert ours.config.expert_quantization == "fp8" and not any(".experts." in n for n, _ in ours.named_parameters())
    theirs = dict(stored.named_buffers())
    for name, buf in ours.named_buffers():
        if ".experts." in name:
            assert buf.dtype == theirs[name].dtype and torch.equal(buf, theirs[name]), name
    ids = prompts(ours.config.vocab_size, seed=7)
    assert report("fp8 experts quantized at load vs transformers + compressed-tensors",
                  max_diff(ours(ids).logits, reference(ids).logits)) <= TOL
    assert torch.equal(ours.generate(ids, max_new_tokens=8), reference.generate(ids, max_new_tokens=8, do_sample=False))
    twin = path.parent / "dense-bf16-original"
    twin.mkdir()
    save_twin(zaya1.ZayaForCausalLM.from_pretrained(path, dtype=torch.bfloat16), twin, "original", dense=True)
    original = zaya1.ZayaForCausalLM.from_pretrained(twin, expert_dtype="fp8")
    for name, buf in original.named_buffers():
        if ".experts." in name:
            assert torch.equal(buf, theirs[name]), name


def test_expert_dtype_refusals(bf16_pair, quantized):
    """A format zaya1 does not write, or quantizing a quantized checkpoint, is a one-line ConfigError; a
    checkpoint already stored in the requested format loads as it is."""
    path, fp8, _ = bf16_pair
    with pytest.raises(zaya1.errors.ConfigError, match="expert_dtype='mxfp4' is not supported"):
        zaya1.ZayaForCausalLM.from_pretrained(path, expert_dtype="mxfp4")
    name, kind, qpath, _ = quantized
    if kind == "fp8":
        assert zaya1.ZayaForCausalLM.from_pretrained(qpath, expert_dtype="fp8").config.expert_quantization == "fp8"
    else:
        with pytest.raises(zaya1.errors.ConfigError, match="stores mxfp4 experts.*quantize them twice"):
            zaya1.ZayaForCausalLM.from_pretrained(qpath, expert_dtype="fp8")


def test_fp8_experts_stacked_per_layer(quantized, tmp_path, report):
    """ZAYA1-8B-FP8-Experts stores each layer's fp8 experts stacked: ``mlp.experts.gate_up_proj`` [E, 2I, H]
    (gate rows, then up) with ``mlp.experts.gate_up_proj.weight_scale`` [E, 2I, 1], and ``down_proj`` alike
    (test/data/configs/README.md). The compressed-tensors checkpoint restacked so loads the same codes and
    gives transformers' logits on the per-expert original."""
    name, kind, path, reference = quantized
    if name != "fp8-channel":
        pytest.skip("the stacked layout is stated for the fp8 (channel-scale) checkpoint")
    from safetensors.torch import load_file

    tensors, config = load_file(str(path / "model.safetensors")), zaya1.ZayaConfig.from_pretrained(path)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}.mlp.experts."
        for proj, parts in (("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",))):
            for suffix, stacked in (("weight", proj), ("weight_scale", f"{proj}.weight_scale")):
                tensors[p + stacked] = torch.stack([
                    torch.cat([tensors.pop(f"{p}{e}.{part}.{suffix}") for part in parts])
                    for e in range(config.num_experts)])
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    stacked, per_expert = zaya1.ZayaForCausalLM.from_pretrained(tmp_path), zaya1.ZayaForCausalLM.from_pretrained(path)
    theirs = dict(per_expert.named_buffers())
    assert all(torch.equal(buf, theirs[n]) for n, buf in stacked.named_buffers() if ".experts." in n)
    ids = prompts(config.vocab_size, seed=8)
    assert report("fp8 experts stacked per layer vs transformers (per-expert original)",
                  max_diff(stacked(ids).logits, reference[torch.float32](ids).logits)) <= TOL


def test_save_pretrained_writes_quantized_experts(quantized, bf16_pair, tmp_path, report):
    """save_pretrained keeps quantized experts as they are held (a checkpoint's fp8 / mxfp4 experts, or fp8
    quantized at load) and writes compressed-tensors' per-expert modules and quantization_config: compressed-
    tensors accepts the config, zaya1 reads the same codes back, and transformers + compressed-tensors loads the
    checkpoint to the same logits (the one-time conversion a native vLLM-Neuron deployment uses for fp8 experts
    from a bf16 checkpoint)."""
    from compressed_tensors.quantization import QuantizationConfig

    name, kind, path, _ = quantized
    sources = {"stored": zaya1.ZayaForCausalLM.from_pretrained(path)}
    if kind == "fp8":
        sources["quantized at load"] = zaya1.ZayaForCausalLM.from_pretrained(bf16_pair[0], expert_dtype="fp8")
    for label, model in sources.items():
        out = model.save_pretrained(tmp_path / label.replace(" ", "-"))
        QuantizationConfig.model_validate(json.loads((out / "config.json").read_text())["quantization_config"])
        again = zaya1.ZayaForCausalLM.from_pretrained(out)
        assert again.config.expert_quantization == kind
        held = dict(model.named_buffers())
        assert all(torch.equal(buf, held[n]) for n, buf in again.named_buffers() if ".experts." in n)
        with transformers_merges_zaya_experts():
            theirs = load_hf(out)
        for param in theirs.model.parameters():
            param.data = param.data.float()  # mxfp4: the decompressor's bf16 (exact upcast)
        ids = prompts(model.config.vocab_size, seed=9)
        assert report(f"{name} experts ({label}) saved, transformers + compressed-tensors",
                      max_diff(theirs(ids).logits, model(ids).logits)) <= TOL


def test_quantize_command(bf16_pair, tmp_path, report):
    """``zaya1 quantize SRC DST``: the bf16 checkpoint with fp8 experts, its tokenizer along; transformers +
    compressed-tensors loads it to the logits it gives on compressed-tensors' own checkpoint of the weights."""
    from zaya1.tools.cli import main

    path, fp8, reference = bf16_pair
    source = tmp_path / "with-tokenizer"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        (source / name).write_bytes((path / name).read_bytes())
    save_tokenizer(source)
    assert main(["quantize", str(source), str(tmp_path / "fp8")]) == 0
    assert main(["quantize", str(source), str(source) + "/"]) == 2  # never over its own source
    assert (source / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    assert (tmp_path / "fp8" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    with transformers_merges_zaya_experts():
        theirs = load_hf(tmp_path / "fp8")
    ids = prompts(reference.config.vocab_size, seed=10)
    assert report("zaya1 quantize output, transformers + compressed-tensors vs compressed-tensors' checkpoint",
                  max_diff(theirs(ids).logits, reference(ids).logits)) <= TOL


@pytest.mark.parametrize("kind", ["fp8", "mxfp4"])
def test_cpu_dequantization_is_measured_and_exact(kind):
    """Eager CPU code dequantizes experts by the faster of eager PyTorch and an inductor-compiled graph,
    measured once per shape on this machine: whichever is chosen gives the bits of the formula
    (``dequantize``, transformers' own), and the choice is recorded with both timings."""
    from zaya1 import kernels
    from zaya1.quantization import QuantizedWeight, compiled_dequantize, dequantize

    weight = QuantizedWeight(kind, 3, 64, 96).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    if kind == "fp8":
        weight.codes.copy_((torch.randn(weight.codes.shape, generator=gen) * 40).to(torch.float8_e4m3fn))
        weight.scale.copy_(torch.rand(weight.scale.shape, generator=gen))
    else:
        weight.codes.copy_(torch.randint(0, 256, weight.codes.shape, generator=gen, dtype=torch.uint8))
        weight.scale.copy_(torch.randint(115, 135, weight.scale.shape, generator=gen, dtype=torch.uint8))
    expected = dequantize(kind, weight.codes[1], weight.scale[1], torch.bfloat16)
    assert torch.equal(compiled_dequantize(kind, weight.codes[1], weight.scale[1], torch.bfloat16), expected)
    assert torch.equal(weight[1], expected)
    entry = kernels.TUNER.entries[f"dequantize {kind} 64x{96 if kind == 'fp8' else 48} torch.bfloat16 "
                                  f"threads{torch.get_num_threads()}"]
    assert entry["choice"] in ("eager", "compiled") and set(entry["ms"]) == {"eager", "compiled"}


def test_fp8_quantized_at_load_under_simulated_tp(bf16_pair, report):
    """expert_dtype="fp8" with simulated tensor parallelism: each rank holds its slice of the same codes and
    scales, and the logits are transformers + compressed-tensors' on compressed-tensors' own checkpoint."""
    path, _, reference = bf16_pair
    model = simulated_tp.from_pretrained(path, 2, expert_dtype="fp8")
    assert model.ranks[1].model.layers[0].mlp.experts.gate_up_proj.codes.dtype == torch.float8_e4m3fn
    ids = prompts(model.config.vocab_size, seed=11)
    assert report("fp8 experts quantized at load, simulated tp 2, vs transformers + compressed-tensors",
                  max_diff(model(ids).logits, reference(ids).logits)) <= TOL
