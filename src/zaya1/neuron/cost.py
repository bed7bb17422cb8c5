"""``zaya1 cost``: a Trainium2 cost model from the lowered step graphs.

The core step functions NxDI traces (``ZayaModel.prefill`` for context encoding (CTE), ``ZayaModel.decode``
for token generation (TKG)) plus the tied lm_head are lowered with torch-xla on CPU at ONE rank's shapes:
the model is built for ``tp`` ranks with a comm whose all-reduce / all-gather are torch-xla collectives,
so the HLO shows them and their bytes. TKG takes the KV cache as NxDI passes it, K/V [B, nkv_local,
bucket, d] per layer. The HLO is read by ``zaya1.neuron.hlo`` (bytes read per parameter role, materialised
copies, FLOPs, collectives, op inventory, host fallbacks: custom calls, host transfers, dynamic shapes, plus
the aten:: ops torch-xla ran on the host while tracing).

Real widths are lowered with ``layers`` and ``layers + 1`` decoder layers and extrapolated linearly to the
config's depth (layers >= 2, so both graphs contain an EDA layer; every layer after the first costs what
layer ``layers + 1`` costs: a sliding-window layer differs from a full one only in its mask, and reads the
same KV bucket).

Next to it: the analytical minimum of one rank (architecture doc section 5: lm_head + embedding rows +
attention + router + norms + the selected experts, and KV / CCA state traffic) and a Trainium2 ESTIMATE:
one chip has 2.9 TB/s HBM and 667 dense bf16 TFLOPS (AWS, Trainium2 architecture page) and 4 logical cores
at LNC 2; a rank gets the chip / min(tp, 4) (ranks beyond 4 sit on further chips of a trn2.48xlarge), time =
max(bytes / bandwidth, FLOPs / peak). It is a roofline floor (no collective latency, no overlap loss), not
a measurement; ``--collective-us`` adds (collectives per step) x a latency the user names, as its own column.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import ZayaConfig
from ..errors import ConfigError, NeuronUnavailableError
from ..family import PUBLISHED, structure
from .artifacts import EXPERT_DTYPES, expert_dtype_flag
from .hlo import HloCost, analyse, parse_entry
from ..model import ZayaModel
from ..moe import TRN2_BF16_FLOPS, TRN2_HBM_BYTES_PER_S, block_size_for
from ..sharding import cca_state_shapes

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
LOGICAL_CORES_PER_CHIP = 4  # a Trainium2 chip at LNC 2 (8 physical NeuronCore-v3)
INSTANCES = {"trn2.3xlarge": 1, "trn2.48xlarge": 16}  # Trainium2 chips


def require_torch_xla():
    try:
        import torch_xla  # noqa: F401
        import torch_xla.core.xla_model as xm
    except ImportError as exc:
        raise NeuronUnavailableError(
            f"zaya1 cost needs torch-xla to lower the step graphs ({exc}); run it in the NxDI CPU environment "
            f"(PJRT_DEVICE=CPU, see docs/trainium-cost.md).") from None
    return torch_xla, xm


class XlaComm:
    """One rank of ``world_size``: collectives as torch-xla ops (lowered, never run). The all-reduce is fp32,
    as NxDComm's; it calls the op directly (``xm.all_reduce`` is an identity on a single CPU device)."""

    def __init__(self, world_size: int, xm):
        self.world_size, self.xm = world_size, xm
        self.groups = [list(range(world_size))]

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        from torch_xla import _XLAC

        return _XLAC._xla_all_reduce(self.xm.REDUCE_SUM, x.to(torch.float32), 1.0, self.groups, False).to(x.dtype)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.world_size == 1:
            return x
        return self.xm.all_gather(x, dim=dim, groups=self.groups, pin_layout=False)


@dataclass
class GraphCost:
    """One rank's traffic and work for one step of a graph (a CTE bucket or a TKG bucket)."""

    weight_bytes: int  # weights read (selections count the selected elements)
    expert_weight_bytes: int  # the part of weight_bytes that is expert weights
    kv_bytes: int  # KV cache read + written
    state_bytes: int  # CCA conv / value state read + written
    materialised_bytes: int  # gather / concatenate / dynamic-slice outputs > 1 MiB
    selective_bytes: int  # ... of which selections of weights / KV consumed only by dots
    flops: int
    expert_flops: int  # the part of flops that multiplies expert weights
    collectives: dict  # opcode -> [count, bytes]
    ops: dict  # opcode -> count
    host_fallbacks: dict  # host ops, dynamic shapes (hlo.HOST_OPS ...) and aten:: ops run on the host -> count

    @property
    def hbm_bytes(self) -> int:
        """Reads + writes of weights, KV and state, plus every non-selective materialised copy written once
        and read once (a selective load is already counted as a read)."""
        return (self.weight_bytes + self.kv_bytes + self.state_bytes
                + 2 * (self.materialised_bytes - self.selective_bytes))

    def extrapolate(self, other: "GraphCost", extra_layers: int) -> "GraphCost":
        """self (n layers) + extra_layers x (other (n + 1 layers) - self)."""
        def lin(a, b):
            return a + extra_layers * (b - a)

        def lin_dict(a: dict, b: dict):
            return {k: ([lin(x, y) for x, y in zip(a.get(k, [0, 0]), b[k])] if isinstance(b[k], list)
                        else lin(a.get(k, 0), b[k])) for k in b}

        scalars = {k: lin(getattr(self, k), getattr(other, k)) for k in
                   ("weight_bytes", "expert_weight_bytes", "kv_bytes", "state_bytes", "materialised_bytes",
                    "selective_bytes", "flops", "expert_flops")}
        return GraphCost(**scalars, collectives=lin_dict(self.collectives, other.collectives),
                         ops=lin_dict(self.ops, other.ops), host_fallbacks=lin_dict(self.host_fallbacks,
                                                                                      other.host_fallbacks))


def aten_counters() -> dict[str, int]:
    """torch-xla's ``aten::`` counters so far: ops it ran on the host instead of lowering them."""
    import torch_xla.debug.metrics as met

    return {n: met.counter_value(n) for n in met.counter_names() if n.startswith("aten::")}


def aten_fallbacks(before: dict[str, int]) -> dict[str, int]:
    """The ``aten::`` ops run on the host since ``before`` (an ``aten_counters()``) -> count."""
    return {n: c - before.get(n, 0) for n, c in aten_counters().items() if c != before.get(n, 0)}


def _role(name: str) -> str:
    return "experts" if ".mlp.experts." in name else "weight"


def lower_step(config: ZayaConfig, tp: int, batch: int, bucket: int, graph: str, dtype: torch.dtype,
               block_size: int | None = None):
    """Lower one rank's CTE (``graph='cte'``, input [batch, bucket]) or TKG (``graph='tkg'``, KV bucket
    ``bucket``) step; ``block_size`` overrides the blockwise MoE's choice (``moe.block_size_for``).
    Returns (HLO text, parameter number -> (role, itemsize), output bytes by role, aten:: ops torch-xla ran
    on the host while tracing -> count)."""
    torch_xla, xm = require_torch_xla()
    before = aten_counters()
    dev = torch_xla.device()
    with torch.device("meta"):
        model = ZayaModel(config, XlaComm(tp, xm)).to(dtype)
    model = model.to_empty(device=dev)
    model.requires_grad_(False)
    for layer in model.layers:  # fp32 like the loaded model's (ZayaRouter._apply), values irrelevant here
        layer.mlp.router.balancing_biases.data = torch.zeros(config.num_router_classes, device=dev)
        if block_size is not None:
            layer.mlp.experts.block_size = block_size
    torch_xla.sync()  # the weights become device data (HLO parameters), not constants
    weights = [*model.named_parameters(), *model.named_buffers()]  # buffers: quantized experts' codes, scales
    named = {id(p): _role(n) for n, p in weights}
    shard, d = model.shard, config.head_dim
    tensors: dict[int, tuple[str, torch.Tensor]] = {}

    def put(role: str, t: torch.Tensor) -> torch.Tensor:
        t = t.to(dev)
        tensors[torch_xla._XLAC._xla_get_tensor_id(t)] = (role, t)
        return t

    if graph == "cte":
        ids = put("input", torch.zeros(batch, bucket, dtype=torch.long))
        lengths = put("input", torch.full((batch,), bucket, dtype=torch.long))
        hidden, steps = model.prefill(ids, lengths, dispatch="blockwise")
    else:
        ids = put("input", torch.zeros(batch, 1, dtype=torch.long))
        positions = put("input", torch.full((batch,), bucket - 1, dtype=torch.long))
        kv = [(put("kv", torch.zeros(batch, shard.kv_heads, bucket, d, dtype=dtype)),
               put("kv", torch.zeros(batch, shard.kv_heads, bucket, d, dtype=dtype))) for _ in model.layers]
        conv_shape, value_shape = cca_state_shapes(config, tp)
        states = [(put("state", torch.zeros(batch, *conv_shape, dtype=dtype)),
                   put("state", torch.zeros(batch, *value_shape, dtype=dtype))) for _ in model.layers]
        hidden, steps = model.decode(ids, positions, kv, states)
    logits = model.comm.all_gather(torch.nn.functional.linear(hidden, model.embed_tokens.weight), dim=-1)
    outputs = [logits] + [t for s in steps for t in (s.key, s.value, s.conv, s.value_prev)]
    written = {"kv": sum(t.numel() * t.element_size() for s in steps for t in (s.key, s.value)),
               "state": sum(t.numel() * t.element_size() for s in steps for t in (s.conv, s.value_prev))}
    hlo = torch_xla._XLAC._get_xla_tensors_hlo(outputs)
    fallbacks = aten_fallbacks(before)
    ids_, values = torch_xla._XLAC._get_tensors_xla_device_data_node(outputs)
    for _, p in weights:
        tensors[torch_xla._XLAC._xla_get_tensor_id(p)] = (named[id(p)], p)
    # the graph's device data, in HLO parameter order; both orders and the tensors are checked by shape
    hlo_shapes = {i.parameter_number: i.shapes[0][1] for i in parse_entry(hlo) if i.opcode == "parameter"}
    roles = {}
    for number, (tid, value) in enumerate(zip(ids_, values)):
        role, t = tensors.get(tid, ("scalar", value))
        if not list(t.shape) == list(value.shape) == hlo_shapes[number]:
            raise RuntimeError(f"HLO parameter {number} {hlo_shapes[number]} is not the tensor {list(t.shape)}")
        roles[number] = (role, t.element_size())
    return hlo, roles, written, fallbacks


def graph_cost(config: ZayaConfig, tp: int, batch: int, bucket: int, graph: str, dtype: torch.dtype,
               block_size: int | None = None) -> tuple:
    hlo, roles, written, fallbacks = lower_step(config, tp, batch, bucket, graph, dtype, block_size)
    cost: HloCost = analyse(hlo, roles)
    read = cost.read_bytes
    return GraphCost(weight_bytes=read.get("weight", 0) + read.get("experts", 0),
                     expert_weight_bytes=read.get("experts", 0),
                     kv_bytes=read.get("kv", 0) + written["kv"], state_bytes=read.get("state", 0) + written["state"],
                     materialised_bytes=cost.materialised_bytes(), selective_bytes=cost.materialised_bytes(True),
                     flops=cost.flops, expert_flops=cost.expert_flops, collectives=cost.collectives, ops=dict(cost.ops),
                     host_fallbacks={**cost.host_fallbacks, **fallbacks}), cost


def minimum(config: ZayaConfig, tp: int, batch: int, bucket: int, graph: str, dtype: torch.dtype) -> dict:
    """The analytical minimum of one rank for one step (top-1 routing, no skipped tokens, distinct experts)."""
    with torch.device("meta"):
        model = ZayaModel(config, XlaComm(tp, None)).to(dtype)
    size = torch.finfo(dtype).bits // 8
    layer = model.layers[-1]
    attn, router, experts = layer.self_attn, layer.mlp.router, layer.mlp.experts
    layers, d, h = config.num_hidden_layers, config.head_dim, config.hidden_size
    vocab_local = model.embed_tokens.weight.shape[0]
    tokens = batch * (bucket if graph == "cte" else 1)
    expert_elems = experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()
    # bytes of one expert: as stored (quantized: codes + scales), else the model dtype's
    expert_bytes = (sum(t[0].numel() * t.element_size() for t in experts.buffers()) if config.expert_quantization
                    else expert_elems * size)
    per_layer = sum(p.numel() for n, p in layer.named_parameters() if ".experts." not in n)
    weights = (vocab_local * h + tokens * h + layers * per_layer + model.norm.weight.numel()
               + model.input_scale.hidden_states_scale.numel() * 2) * size
    experts_read = layers * min(tokens, config.num_experts) * expert_bytes
    kv_token = 2 * model.shard.kv_heads * d * size * layers
    state_seq = sum(math.prod(shape) for shape in cca_state_shapes(config, tp)) * size * layers
    if graph == "cte":
        kv, state = batch * bucket * kv_token, batch * state_seq
        pairs = batch * bucket * (bucket + 1) // 2  # causal (query, key) pairs
    else:
        kv, state = batch * (bucket + 1) * kv_token, 2 * batch * state_seq
        pairs = batch * bucket
    linear_macs = sum(m.weight.numel() for m in attn.modules() if isinstance(m, torch.nn.Linear))
    conv_macs = attn.conv_qk_depthwise.weight.numel() + attn.conv_qk_grouped.weight.numel()
    router_macs = sum(m.weight.numel() for m in router.modules() if isinstance(m, torch.nn.Linear))
    expert_flops = 2 * tokens * layers * expert_elems
    macs = tokens * layers * (linear_macs + conv_macs + router_macs + expert_elems)
    macs += layers * pairs * 2 * attn.nq * d + batch * vocab_local * h
    return {"weight_bytes": weights + experts_read, "expert_weight_bytes": experts_read, "kv_bytes": kv,
            "state_bytes": state, "flops": 2 * macs, "expert_flops": expert_flops, "layer_expert_bytes": config.num_experts * expert_bytes}


def check_instance(instance: str, tp: int) -> None:
    cores = INSTANCES[instance] * LOGICAL_CORES_PER_CHIP
    if not 1 <= tp <= cores:
        raise ConfigError(f"--tp {tp} on {instance}: it has {cores} logical cores (LNC 2), one rank each; use "
                          f"--tp 1..{cores}" + (" or --instance trn2.48xlarge." if cores < tp else "."))


def trn2_ms(nbytes: int, flops: int, tp: int) -> float:
    """ESTIMATE: one rank's roofline time on its share of a Trainium2 chip: the chip over min(tp, 4) ranks
    (tp > 4: one logical core per rank, on tp / 4 chips)."""
    share = min(tp, LOGICAL_CORES_PER_CHIP)
    return 1e3 * max(nbytes / (TRN2_HBM_BYTES_PER_S / share), flops / (TRN2_BF16_FLOPS / share))


def case(config: ZayaConfig, tp: int, batch: int, bucket: int, graph: str, dtype: torch.dtype, layers: int,
         block_size: int | None = None, collective_us: float | None = None) -> dict:
    """Lowered cost (extrapolated to the config's depth), the minimum and the estimates of one case; decode
    (TKG) rows also give tokens/s (batch tokens per step), and ``collective_us`` (a per-collective latency
    the caller names) a second estimate that adds it per collective of the step."""
    depth = config.num_hidden_layers
    if layers >= depth:
        cost, hlo = graph_cost(config, tp, batch, bucket, graph, dtype, block_size)
    else:
        small, _ = graph_cost(config.replace(num_hidden_layers=layers, layer_types=config.layer_types[:layers]),
                              tp, batch, bucket, graph, dtype, block_size)
        big, hlo = graph_cost(config.replace(num_hidden_layers=layers + 1, layer_types=config.layer_types[:layers + 1]),
                              tp, batch, bucket, graph, dtype, block_size)
        cost = small.extrapolate(big, depth - layers)
    low = minimum(config, tp, batch, bucket, graph, dtype)
    low_bytes = low["weight_bytes"] + low["kv_bytes"] + low["state_bytes"]
    estimate = trn2_ms(cost.hbm_bytes, cost.flops, tp)
    count = sum(n for n, _ in cost.collectives.values())
    with_collectives = None if collective_us is None else estimate + count * collective_us / 1e3
    return {
        "graph": graph, "tp": tp, "batch": batch, "bucket": bucket, "layers_lowered": min(layers, depth),
        "block_size": block_size or block_size_for(batch * bucket, config.num_experts) if graph == "cte" else None,
        "cost": asdict(cost), "hbm_bytes": cost.hbm_bytes, "minimum": low, "minimum_bytes": low_bytes,
        "ratio_bytes_unfused": (cost.hbm_bytes + 2 * cost.selective_bytes) / low_bytes,
        "ratio_weight_kv": (cost.weight_bytes + cost.kv_bytes) / (low["weight_bytes"] + low["kv_bytes"]),
        "ratio_bytes": cost.hbm_bytes / low_bytes, "ratio_flops": cost.flops / low["flops"],
        "ratio_expert_flops": cost.expert_flops / low["expert_flops"],
        "ratio_expert_bytes_to_layer": cost.expert_weight_bytes / (depth * low["layer_expert_bytes"]),
        "estimate_trn2_ms": estimate, "estimate_trn2_floor_ms": trn2_ms(low_bytes, low["flops"], tp),
        "tokens_per_s": 1e3 / estimate * batch if graph == "tkg" else None,
        "collectives_per_step": count, "estimate_with_collectives_ms": with_collectives,
        "materialised_ops": [asdict(m) for m in hlo.materialised],
    }


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:,.1f}"


def _rate(ms: float, batch: int) -> str:
    return f"{1e3 / ms * batch:,.0f}"


def format_table(rows: list[dict], collective_us: float | None = None) -> str:
    """Decode rows give tokens/s (batch / step time); ``collective_us`` adds the column that prices the step's
    collectives at that latency each."""
    head = ("| graph | B | bucket | block | weights read MiB | experts MiB (x layer) | materialised MiB (selective) "
            "| KV MiB | GFLOP | collectives (count, MiB) | bytes / min (unfused) | weight+KV / min | FLOPs / min (experts) "
            "| est. trn2 ms (floor) | est. tok/s (floor) |")
    if collective_us is not None:
        head += f" + collectives at {collective_us:g} us: ms (tok/s) |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        c = r["cost"]
        coll = ", ".join(f"{k} {v[0]:.0f} ({_mib(v[1])})" for k, v in sorted(c["collectives"].items()))
        rate = (f"{r['tokens_per_s']:,.0f} ({_rate(r['estimate_trn2_floor_ms'], r['batch'])})"
                if r["graph"] == "tkg" else "-")
        line = (
            f"| {r['graph']} | {r['batch']} | {r['bucket']} | {r['block_size'] or '-'} | {_mib(c['weight_bytes'])} | "
            f"{_mib(c['expert_weight_bytes'])} ({r['ratio_expert_bytes_to_layer']:.2f}) | "
            f"{_mib(c['materialised_bytes'])} ({_mib(c['selective_bytes'])}) | {_mib(c['kv_bytes'])} | "
            f"{c['flops'] / 1e9:,.1f} | {coll} | {r['ratio_bytes']:.2f} ({r['ratio_bytes_unfused']:.2f}) | "
            f"{r['ratio_weight_kv']:.2f} | "
            f"{r['ratio_flops']:.2f} ({r['ratio_expert_flops']:.2f}) | {r['estimate_trn2_ms']:.3f} ({r['estimate_trn2_floor_ms']:.3f}) "
            f"| {rate} |")
        if collective_us is not None:
            ms = r["estimate_with_collectives_ms"]
            line += f" {ms:.3f} ({_rate(ms, r['batch']) if r['graph'] == 'tkg' else '-'}) |"
        lines.append(line)
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory whose config.json to use, or the name of a published "
                                   f"checkpoint whose rebuilt structure to use ({', '.join(PUBLISHED)}; "
                                   "zaya1.family); default: ZAYA1 real widths")
    p.add_argument("--layers", type=int, default=2, help="decoder layers to lower; extrapolated to the config's depth")
    p.add_argument("--instance", choices=sorted(INSTANCES), default="trn2.3xlarge",
                   help="trn2.3xlarge: 1 chip (tp <= 4); trn2.48xlarge: 16 chips (tp <= 64); a rank's share of a "
                        "chip is 1 / min(tp, 4)")
    p.add_argument("--tp", type=int, default=4)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--cte-buckets", type=int, nargs="*", default=[128, 512, 2048])
    p.add_argument("--tkg-buckets", type=int, nargs="*", default=[4096])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--expert-dtype", choices=EXPERT_DTYPES, default="model",
                   help="experts in --dtype, or fp8 e4m3 codes with row scales dequantized in the graph")
    p.add_argument("--block-size", type=int, help="CTE blockwise MoE block size (default: chosen from the bucket)")
    p.add_argument("--collective-us", type=float,
                   help="also print the estimate plus this latency (microseconds, your assumption) per collective")
    p.add_argument("--json", help="also write every case (with the materialised op list) to this file")


def _config(model: str | None) -> ZayaConfig:
    if model is None:
        return ZayaConfig()
    if model in PUBLISHED and not Path(model).exists():
        return structure(model)
    return ZayaConfig.from_pretrained(model)


def run(args) -> int:
    require_torch_xla()
    if args.layers < 2:
        raise ConfigError(f"--layers {args.layers}: lower at least 2 layers (the first has no EDA state).")
    check_instance(args.instance, args.tp)
    config = _config(args.model)
    config = config.with_expert_dtype(expert_dtype_flag(args.expert_dtype))
    dtype = DTYPES[args.dtype]
    rows = [case(config, args.tp, b, s, g, dtype, args.layers, args.block_size, args.collective_us)
            for g, buckets in (("cte", args.cte_buckets), ("tkg", args.tkg_buckets)) for b in args.batch for s in buckets]
    lowered = config.layer_types[:args.layers + 1]
    print(f"one rank of tp={args.tp} on {args.instance}, {args.dtype}, experts "
          f"{config.expert_quantization or args.dtype}, {config.num_hidden_layers} layers (lowered {args.layers} "
          f"and {args.layers + 1}: {', '.join(lowered)}; extrapolated as layer {args.layers + 1}); trn2 ms is an "
          f"ESTIMATE (roofline: no collective latency, no overlap loss; no measurement)")
    print(format_table(rows, args.collective_us))
    fallbacks: dict = {}
    for r in rows:
        for k, v in r["cost"]["host_fallbacks"].items():
            fallbacks[k] = fallbacks.get(k, 0) + v
    print("host fallbacks (custom calls, host transfers, dynamic shapes, aten:: ops run on the host): "
          + (", ".join(f"{k} {v:g}" for k, v in sorted(fallbacks.items())) if fallbacks else "none in any graph"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
