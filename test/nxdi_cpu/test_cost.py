"""The cost model's accounting against hand-computed values: a hand-written HLO module, then the tiny config's
lowered CTE and TKG graphs at tp 2 (one rank's shapes), whose expert, KV, state and collective bytes follow
from the config by hand; the host-fallback detector, the rank's share of a trn2 instance, and
ZAYA1-74B-preview's first two real-width layers (full, sliding) at tp 4 with fp8 and bf16 experts, whose
expert bytes follow from its published shapes. Runs where torch-xla is installed (CI's NxDI stage,
PJRT_DEVICE=CPU)."""

from dataclasses import asdict

import pytest
import torch

pytest.importorskip("torch_xla")

from zaya1.neuron import cost  # noqa: E402
from zaya1.config import ZayaConfig  # noqa: E402
from zaya1.errors import ConfigError  # noqa: E402
from zaya1.family import structure  # noqa: E402
from zaya1.model import ZayaModel  # noqa: E402
from zaya1.neuron.hlo import analyse  # noqa: E402

HLO = """HloModule m, entry_computation_layout={()}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

ENTRY %main (p0.1: bf16[16,1024,512], p1.2: s64[3], p2.3: f32[3,512], p3.4: f32[600,512]) -> (f32[3,1024]) {
  %p0.1 = bf16[16,1024,512]{2,1,0} parameter(0)
  %p1.2 = s64[3]{0} parameter(1)
  %reshape.5 = s64[3,1]{1,0} reshape(s64[3]{0} %p1.2)
  %gather.6 = bf16[3,1024,512]{2,1,0} gather(bf16[16,1024,512]{2,1,0} %p0.1, s64[3,1]{1,0} %reshape.5), offset_dims={1,2}, collapsed_slice_dims={0}, start_index_map={0}, index_vector_dim=1, slice_sizes={1,1024,512}
  %convert.7 = f32[3,1024,512]{2,1,0} convert(bf16[3,1024,512]{2,1,0} %gather.6)
  %p2.3 = f32[3,512]{1,0} parameter(2)
  %dot.8 = f32[3,1024]{1,0} dot(f32[3,512]{1,0} %p2.3, f32[3,1024,512]{2,1,0} %convert.7), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={2}
  %p3.4 = f32[600,512]{1,0} parameter(3)
  %concatenate.9 = f32[1200,512]{1,0} concatenate(f32[600,512]{1,0} %p3.4, f32[600,512]{1,0} %p3.4), dimensions={0}
  %all-reduce.10 = f32[3,1024]{1,0} all-reduce(f32[3,1024]{1,0} %dot.8), replica_groups={{0,1}}, to_apply=%add
  ROOT %tuple.11 = (f32[3,1024]{1,0}, f32[1200,512]{1,0}) tuple(f32[3,1024]{1,0} %all-reduce.10, f32[1200,512]{1,0} %concatenate.9)
}
"""


def test_hand_written_hlo():
    roles = {0: ("experts", 2), 1: ("input", 8), 2: ("input", 4), 3: ("kv", 4)}
    c = analyse(HLO, roles)
    assert c.read_bytes == {"experts": 3 * 1024 * 512 * 2,  # three gathered experts, not all 16
                            "input": 3 * 8 + 3 * 512 * 4, "kv": 600 * 512 * 4}
    assert c.flops == c.expert_flops == 2 * 3 * 1024 * 512  # its rhs is a selection of expert weights
    assert c.collectives == {"all-reduce": [1, 3 * 1024 * 4]}
    big = {m.name: (m.nbytes, m.source, m.selective) for m in c.materialised}
    assert big == {"gather.6": (3 * 1024 * 512 * 2, "experts", True),  # only consumer: a dot (via convert)
                   "concatenate.9": (1200 * 512 * 4, "kv", False)}
    assert c.ops["parameter"] == 4 and c.ops["dot"] == 1  # the reducer's parameters are not counted


# tiny ZAYA1 at tp 2: rank shapes q heads 2, KV heads 1 (whole groups), I_local 16
CFG = ZayaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, num_experts=4, moe_intermediate_size=32, router_hidden_size=8,
                 max_position_embeddings=512, torch_dtype="float32")
TP, B, LAYERS, H, D, F32 = 2, 2, 2, 64, 16, 4
EXPERT = (2 * 16 * H + H * 16) * F32  # one expert's gate_up [2I, H] + down [H, I] on a rank: 12,288 B
ALL_REDUCE = B * H * F32  # [B, 1, H] fp32 per reduce in TKG


def graph(kind, bucket):
    return cost.graph_cost(CFG, TP, B, bucket, kind, torch.float32)[0]


def test_tkg_accounting():
    c = graph("tkg", 8)
    assert c.expert_weight_bytes == LAYERS * B * EXPERT  # each token's own expert, per layer
    assert c.expert_flops == LAYERS * 2 * B * EXPERT // F32  # 2 x rows x expert elements
    kv_read = LAYERS * 2 * B * 1 * 8 * D * F32  # K and V [B, 1, 8, 16] per layer
    kv_written = LAYERS * 2 * B * 1 * 1 * D * F32
    assert c.kv_bytes == kv_read + kv_written == 4608
    state = LAYERS * B * ((2 + 1) * D * 2 + D) * F32  # conv [B, 48, 2] + value [B, 16]
    assert c.state_bytes == 2 * state  # read and written
    # embedding reduce + 2 per layer; logits [B, 256] gathered from [B, 128]
    assert c.collectives == {"all-reduce": [1 + 2 * LAYERS, (1 + 2 * LAYERS) * ALL_REDUCE],
                             "all-gather": [1, B * 256 * F32]}
    assert c.materialised_bytes == 0  # nothing over 1 MiB at these widths
    assert c.ops.get("concatenate", 0) > 0 and c.ops["dot"] > 0


def test_fp8_experts_halve_the_expert_bytes():
    """fp8 experts (--expert-dtype fp8): TKG reads each token's expert as 1-byte codes plus an fp32 scale per
    row, gathered like the dense weights; the analytical minimum counts the same bytes."""
    fp8 = CFG.replace(expert_quantization="fp8")
    expert = (2 * 16 * H + H * 16) * 1 + (2 * 16 + H) * F32  # codes + row scales of one expert on a rank
    c = cost.graph_cost(fp8, TP, B, 8, "tkg", torch.float32)[0]
    assert c.expert_weight_bytes == LAYERS * B * expert
    assert cost.minimum(fp8, TP, B, 8, "tkg", torch.float32)["expert_weight_bytes"] == LAYERS * B * expert
    dense = graph("tkg", 8)
    assert c.weight_bytes - c.expert_weight_bytes == dense.weight_bytes - dense.expert_weight_bytes


def test_cte_accounting():
    c = graph("cte", 64)
    # 128 tokens, 4 experts: block_size_for picks 128 rows, so 4 + (128 - 4) // 128 = 4 blocks per layer
    assert c.expert_weight_bytes == LAYERS * 4 * EXPERT
    assert c.expert_flops == LAYERS * 2 * (4 * 128) * EXPERT // F32  # every row of the 4 blocks is computed
    assert c.kv_bytes == LAYERS * 2 * B * 1 * 64 * D * F32  # written, nothing read
    assert c.state_bytes == LAYERS * B * ((2 + 1) * D * 2 + D) * F32
    assert c.collectives["all-reduce"] == [1 + 2 * LAYERS, (1 + 2 * LAYERS) * B * 64 * H * F32]
    assert c.collectives["all-gather"] == [1, B * 256 * F32]  # only the last token's logits
    assert "reduce-window" not in c.ops and "sort" not in c.ops  # no cumsum / sort over tokens


def test_layer_extrapolation_is_exact():
    """Lowering 2 and 3 layers and extrapolating to 4 gives the 4-layer graph's numbers."""
    deep = CFG.replace(num_hidden_layers=4, layer_types=CFG.layer_types * 2)
    direct = cost.graph_cost(deep, TP, B, 8, "tkg", torch.float32)[0]
    small = cost.graph_cost(CFG, TP, B, 8, "tkg", torch.float32)[0]
    big = cost.graph_cost(CFG.replace(num_hidden_layers=3, layer_types=CFG.layer_types + CFG.layer_types[:1]),
                          TP, B, 8, "tkg", torch.float32)[0]
    assert small.extrapolate(big, 2) == direct


def test_minimum_tkg_by_hand():
    low = cost.minimum(CFG, TP, B, 8, "tkg", torch.float32)
    assert low["expert_weight_bytes"] == LAYERS * B * EXPERT
    assert low["kv_bytes"] == LAYERS * 2 * B * 9 * D * F32
    assert low["layer_expert_bytes"] == 4 * EXPERT


@pytest.mark.parametrize("block_size, experts", [(None, None), (16, None), (None, "fp8")])
def test_lowered_steps_compute_the_eager_result(block_size, experts):
    """The graphs the cost model reads are the right ones: prefill (blockwise MoE, cumsum by matmul) and
    decode (cache scored in place) run on the XLA CPU device match the eager CPU model (grouped MoE, concatenated
    cache), float32. fp8 experts: the graphs multiply by the codes and scale the products' rows; the eager
    model dequantizes first."""
    import torch_xla

    from zaya1 import ZayaForCausalLM
    from zaya1.tools.demo import demo_config, init_random_

    model = init_random_(ZayaForCausalLM(demo_config().replace(expert_quantization=experts))).eval().model
    gen = torch.Generator().manual_seed(2)
    for layer in model.layers if experts else []:
        for w in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj):
            w.codes.copy_((16 * torch.randn(w.codes.shape, generator=gen)).to(w.codes.dtype))
            w.scale.copy_(torch.rand(w.scale.shape, generator=gen) / (16 * w.shape[2] ** 0.5))
    for layer in model.layers:
        layer.mlp.experts.block_size = block_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=gen)
    lengths, step = torch.tensor([40, 23]), torch.randint(3, model.config.vocab_size, (2, 1), generator=gen)
    dev = torch_xla.device()
    with torch.no_grad():
        hidden, steps = model.prefill(ids, lengths, dispatch="grouped")
        past = [(s.key, s.value) for s in steps]
        states = [(s.conv, s.value_prev) for s in steps]
        decoded, _ = model.decode(step, lengths, past, states)
        xla = model.to(dev)
        hidden_x, steps_x = xla.prefill(ids.to(dev), lengths.to(dev), dispatch="blockwise")
        decoded_x, _ = xla.decode(step.to(dev), lengths.to(dev), [(k.to(dev), v.to(dev)) for k, v in past],
                                  [(c.to(dev), v.to(dev)) for c, v in states])
    assert (hidden_x.cpu() - hidden).abs().max().item() <= 1e-4
    assert max((a.key.cpu() - b.key).abs().max().item() for a, b in zip(steps_x, steps)) <= 1e-4
    assert (decoded_x.cpu() - decoded).abs().max().item() <= 1e-4


def test_host_fallbacks_are_found(monkeypatch):
    """What "no host fallback" checks: custom calls, host transfers and bounded-dynamic shapes in the HLO, and
    the aten:: ops torch-xla runs on the host while tracing (here a .item() in the decode step)."""
    hlo = HLO.replace("%p1.2 = s64[3]{0} parameter(1)", "%p1.2 = s64[<=3]{0} parameter(1)\n"
                      '  %cc.20 = f32[3]{0} custom-call(s64[<=3]{0} %p1.2), custom_call_target="host_fn"\n'
                      "  %of.21 = token[] outfeed(f32[3]{0} %cc.20)")
    assert analyse(hlo, {}).host_fallbacks == {"custom-call": 1, "outfeed": 1, "dynamic-shape": 1}
    assert analyse(HLO, {}).host_fallbacks == {}
    decode = ZayaModel.decode

    def synced_decode(self, ids, *args):
        ids.sum().item()  # reads a device value on the host
        return decode(self, ids, *args)

    monkeypatch.setattr(ZayaModel, "decode", synced_decode)
    assert cost.graph_cost(CFG, TP, B, 8, "tkg", torch.float32)[0].host_fallbacks == {"aten::_local_scalar_dense": 1}


def test_sliding_layer_costs_what_a_full_layer_costs():
    """The extrapolation prices every layer after the lowered ones as layer ``layers + 1``: a sliding-window
    layer (window 4 < the 8-token KV bucket) must read, compute and reduce exactly what a full one does (it
    differs only in its mask), or ZAYA1-74B-preview's alternating layers would be mispriced."""
    window = CFG.replace(num_hidden_layers=3, layer_types=["full", "full", "full"], sliding_window=4)
    full = cost.graph_cost(window, TP, B, 8, "tkg", torch.float32)[0]
    sliding = cost.graph_cost(window.replace(layer_types=["full", "full", "sliding"]), TP, B, 8, "tkg",
                              torch.float32)[0]
    assert sliding.ops != full.ops  # the window is in the graph...
    assert {**asdict(sliding), "ops": None} == {**asdict(full), "ops": None}  # ...and costs nothing we count


def test_rank_share_of_an_instance():
    """A rank gets a Trainium2 chip (2.9 TB/s, 667 bf16 TFLOPS) over min(tp, 4) ranks: the 4 logical cores of
    a chip at LNC 2; tp 8 / 16 use more chips of a trn2.48xlarge, and a trn2.3xlarge holds at most 4 ranks."""
    gb = 2.9e9  # a millisecond of the whole chip's bandwidth
    assert [cost.trn2_ms(gb, 0, tp) for tp in (1, 2, 4, 8, 16)] == pytest.approx([1, 2, 4, 4, 4])
    assert cost.trn2_ms(0, 667e9, 16) == pytest.approx(4)
    cost.check_instance("trn2.48xlarge", 16)
    with pytest.raises(ConfigError, match="--tp 8 on trn2.3xlarge: it has 4 logical cores"):
        cost.check_instance("trn2.3xlarge", 8)


def test_decode_rate_and_collective_latency_column():
    """A decode row's tokens/s is B per step time; --collective-us adds the latency once per collective of the
    step (the embedding's all-reduce, 2 per layer, the logits' all-gather), never folded into the estimate."""
    row = cost.case(CFG, TP, B, 8, "tkg", torch.float32, LAYERS, collective_us=10.0)
    assert row["collectives_per_step"] == 1 + 2 * LAYERS + 1
    assert row["estimate_with_collectives_ms"] == pytest.approx(row["estimate_trn2_ms"] + 6 * 0.010)
    assert row["tokens_per_s"] == pytest.approx(B * 1e3 / row["estimate_trn2_ms"])
    assert cost.case(CFG, TP, B, 8, "tkg", torch.float32, LAYERS)["estimate_trn2_ms"] == row["estimate_trn2_ms"]


def test_cli_refuses_a_tp_the_instance_cannot_hold(capsys):
    from zaya1.tools.cli import main

    assert main(["cost", "--tp", "8", "--model", "ZAYA1-74B-preview"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--instance trn2.48xlarge" in err, err


# ZAYA1-74B-preview's rebuilt structure (zaya1.family) at real width, tp 4, its first two layers (full, sliding)
B74, TP74 = 1, 4


def layers74(experts=None):
    c = structure("ZAYA1-74B-preview").replace(expert_quantization=experts)
    c = c.replace(num_hidden_layers=2, layer_types=c.layer_types[:2])
    assert c.layer_types == ["full", "sliding"] and c.sliding_window == 4097
    return c


def expert74(itemsize: int, scales: bool) -> int:
    """One expert's bytes on one of 4 ranks from the published shapes (hidden 4096, expert width 4096):
    gate_up [2 x 1024, 4096] + down [4096, 1024], plus an fp32 scale per row of each when quantized."""
    h, i = 4096, 4096 // TP74
    return 3 * i * h * itemsize + (2 * i + h) * 4 * scales


@pytest.mark.parametrize("graph, bucket, experts_read", [("tkg", 4096, B74), ("cte", 128, 24)])
def test_74b_fp8_lowers_with_no_host_fallback(graph, bucket, experts_read):
    """ZAYA1-74B-preview at tp 4 with fp8 experts (trn2.3xlarge): decode at a 4096-token KV bucket and the
    128-token context bucket lower to graphs with no custom call, host transfer, dynamic shape or aten:: op
    run on the host; decode reads each token's own expert per layer, the 128-token context every one of the
    24 experts once (one 128-row block each), as fp8 codes plus their row scales."""
    c = cost.graph_cost(layers74("fp8"), TP74, B74, bucket, graph, torch.bfloat16)[0]
    assert c.host_fallbacks == {}
    assert c.expert_weight_bytes == 2 * experts_read * expert74(1, scales=True)
    low = cost.minimum(layers74("fp8"), TP74, B74, bucket, graph, torch.bfloat16)
    assert low["layer_expert_bytes"] == 24 * expert74(1, scales=True)
    assert low["expert_weight_bytes"] == c.expert_weight_bytes
    assert c.collectives["all-reduce"][0] == 1 + 2 * 2 and c.collectives["all-gather"][0] == 1


def test_74b_fp8_halves_the_decode_expert_bytes():
    """The same decode step with bf16 experts reads twice the fp8 codes' bytes; everything else is equal."""
    fp8 = cost.graph_cost(layers74("fp8"), TP74, B74, 4096, "tkg", torch.bfloat16)[0]
    bf16 = cost.graph_cost(layers74(), TP74, B74, 4096, "tkg", torch.bfloat16)[0]
    assert bf16.expert_weight_bytes == 2 * expert74(2, scales=False)  # 2 layers
    assert fp8.expert_weight_bytes - 2 * (expert74(1, True) - expert74(1, False)) == bf16.expert_weight_bytes // 2
    assert fp8.weight_bytes - fp8.expert_weight_bytes == bf16.weight_bytes - bf16.expert_weight_bytes
    assert bf16.host_fallbacks == {}
