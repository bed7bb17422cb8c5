"""Lower NeuronZayaModel's context-encoding (CTE) and token-generation (TKG) graphs with torch-xla on CPU.

Run as a script (a fresh process: NxD's parallel state is per process):

    python lower_graphs.py --model DIR|real-width --tp 4 --out graphs.json [--execute] [--expert-dtype fp8]

The model is built the way NxD's tracer builds rank 0 (``mock_distributed`` + ``initialize_model_parallel``;
trace/model_builder.py), so every module has one rank's shapes at the given tp, and its collectives lower to
HLO all-reduce / all-gather as on device. Two modes:
* ``--execute`` (tp 1): NxD's CPU mode (NXD_CPU_MODE=1), graphs run and are compared with eager; NxDI's
  batch KV write then uses torch ops instead of torch_neuronx's ``xla_hlo_call`` custom HLO.
* otherwise NxD's device mode, lowered only, with continuous batching (vLLM's layout: context encoding of
  one sequence, whose KV write NxDI does with ``index_put``; its full-batch write is the custom HLO above,
  which only the Neuron SDK can emit).
For each graph it records the HLO op inventory,
torch-xla's ``aten::`` fallback counters (ops run on the host) and the HLO of a second call with other
lengths / positions (a data-dependent shape would change it). ``--execute`` also runs the graphs and returns
their outputs for comparison with eager CPU (tp 1 only).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "shims"))
import neuron_sdk_shims  # noqa: E402

neuron_sdk_shims.install()

import torch_xla  # noqa: E402
import torch_xla.core.xla_model as xm  # noqa: E402
from neuronx_distributed.parallel_layers import parallel_state  # noqa: E402
from neuronx_distributed.trace.mock_torchdist import mock_distributed  # noqa: E402

from zaya1.config import ZayaConfig  # noqa: E402
from zaya1.neuron import ZayaInferenceConfig, ZayaNeuronConfig  # noqa: E402
from zaya1.neuron.artifacts import EXPERT_DTYPES, expert_dtype_flag  # noqa: E402
from zaya1.neuron.cost import aten_counters, aten_fallbacks  # noqa: E402
from zaya1.neuron.modeling import NeuronZayaModel  # noqa: E402

# ZayaConfig's defaults are ZAYA1's real widths; one hybrid layer
REAL_WIDTH = dict(num_hidden_layers=1, max_position_embeddings=4096)


def inventory(hlo: str) -> dict[str, int]:
    return dict(collections.Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", hlo)).most_common())


def inputs(batch: int, width: int, lengths: list[int] | None = None, positions: list[int] | None = None):
    """NxDI's traced inputs: input_ids, attention_mask, position_ids, seq_ids, sampling_params (int32 / fp32)."""
    if positions is None:  # context encoding of right-padded prompts
        ids = torch.randint(3, 200, (batch, width), generator=torch.Generator().manual_seed(width))
        mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None])
        pos = torch.arange(width).expand(batch, width)
    else:  # one token per row at its own position
        ids = torch.randint(3, 200, (batch, 1), generator=torch.Generator().manual_seed(7))
        pos = torch.tensor(positions)[:, None]
        mask = torch.arange(width)[None] <= pos
    return [t.to(torch.int32) for t in (ids, mask, pos, torch.arange(batch))] + [torch.ones(batch, 3)]


def lower(model, args: list, n_positions: int, execute: bool) -> dict:
    dev = xm.xla_device()
    model.n_positions = n_positions
    before = aten_counters()
    out = model(*[a.to(dev) for a in args])
    hlo = torch_xla._XLAC._get_xla_tensors_hlo(list(out))
    fallbacks = aten_fallbacks(before)
    result = {"hlo_instructions": len([line for line in hlo.splitlines() if " = " in line]),
              "ops": inventory(hlo), "aten_fallbacks": fallbacks, "hlo": hlo}
    if execute:
        result["outputs"] = [t.cpu() for t in out]
        xm.mark_step()  # run what is pending (CPU mode updates the cache in place), so graphs stay separate
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="checkpoint directory, or real-width")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--bucket", type=int, default=32, help="context-encoding bucket")
    p.add_argument("--tkg-buckets", default="32,64", help="token-generation buckets (KV lengths) to lower")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--expert-dtype", choices=EXPERT_DTYPES, default="model")
    p.add_argument("--execute", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tkg_buckets = [int(b) for b in args.tkg_buckets.split(",")]
    cb = not args.execute
    nc = ZayaNeuronConfig(tp_degree=args.tp, batch_size=args.batch, seq_len=max(tkg_buckets),
                          max_context_length=args.bucket, torch_dtype=getattr(torch, args.dtype),
                          is_continuous_batching=cb,
                          ctx_batch_size=1 if cb else args.batch)
    expert_dtype = expert_dtype_flag(args.expert_dtype)
    if args.model == "real-width":
        zaya = ZayaConfig(**REAL_WIDTH).with_expert_dtype(expert_dtype)
        config = ZayaInferenceConfig(nc, load_config=lambda c: setattr(c, "zaya", zaya.to_dict()))
    else:
        config = ZayaInferenceConfig.from_checkpoint(args.model, nc, expert_dtype=expert_dtype)
    b, s = args.batch, args.bucket
    cte_b = nc.ctx_batch_size
    graphs = {"cte": (inputs(cte_b, s, lengths=[s, max(1, s // 3)][:cte_b] + [s] * (cte_b - 2)), s),
              "cte_other_lengths": (inputs(cte_b, s, lengths=[max(1, s // 2), s][:cte_b] + [1] * (cte_b - 2)), s)}
    for kv in tkg_buckets:
        graphs[f"tkg_{kv}"] = (inputs(b, kv, positions=[kv - 1, kv // 2][:b] + [1] * (b - 2)), kv)
        graphs[f"tkg_{kv}_other_positions"] = (inputs(b, kv, positions=[1, kv - 2][:b] + [kv // 3] * (b - 2)), kv)
    torch.manual_seed(0)
    with mock_distributed(world_size=args.tp), torch.no_grad():
        torch.distributed.init_process_group(backend="xla", rank=0, world_size=args.tp)
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=args.tp, skip_collective_init=True)
        model = NeuronZayaModel(config).eval().to(nc.torch_dtype)  # NxDI casts every float param (cast_type)
        for param in model.parameters():  # random weights (the math is what is lowered), none left empty
            if param.is_floating_point():  # fp8 codes: drawn in float32 (no normal_ in fp8)
                param.copy_(torch.empty(param.shape).normal_(0, 0.02))
        eager = None
        if args.execute:  # the same weights, run eagerly on CPU (NxDI's CPU mode)
            os.environ["NXD_CPU_MODE"] = "1"
            eager = NeuronZayaModel(config).eval()
            eager.load_state_dict(model.state_dict())
        model = model.to(xm.xla_device())
        out = {"tp": args.tp, "model": args.model, "layers": config.num_hidden_layers, "graphs": {}}
        for name, (graph_inputs, n_positions) in graphs.items():
            # torch-xla chains collectives through one token: start each graph without the last one's
            torch_xla._XLAC._set_all_reduce_token(xm._get_device_context().device, None)
            result = lower(model, graph_inputs, n_positions, args.execute)
            if eager is not None:
                eager.n_positions = n_positions
                expected = eager(*graph_inputs)
                result["max_abs_diff_vs_eager"] = max((a.double() - b.double()).abs().max().item()
                                                      for a, b in zip(result.pop("outputs"), expected))
            out["graphs"][name] = result
    out["shims_reached"] = list(neuron_sdk_shims.REACHED)
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
