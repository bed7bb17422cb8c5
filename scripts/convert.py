#!/usr/bin/env python
"""Convert a ZAYA1 checkpoint (either layout) to tensor-parallel weights, on CPU.

    python scripts/convert.py --model-path /ckpt/ZAYA1-base --output /ckpt/zaya1-tp4 --tp-degree 4

writes, with the sharding plan of zaya1.sharding (the one the Neuron backend and SimulatedTP use):
  --format ranks   (default) tp{rank}_sharded_checkpoint.safetensors, one file per rank (canonical names)
  --format neuron  neuron_state_dict.safetensors: every sharded tensor concatenated over ranks along its
                   partition dim, as NxD's sharding expects
Each file is written to a temporary name and renamed into place, so an interrupted conversion leaves no
file that looks complete. The ranks format loads back with zaya1.simulated_tp.SimulatedTP.from_state_dicts.
Memory streams like the loader: one model plus one rank's shards (ranks), or plus about one tensor (neuron:
each canonical tensor is freed once its concatenated form exists; safetensors writes without copying).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from zaya1 import ZayaForCausalLM
from zaya1.artifacts import save_state_dict_atomic
from zaya1.errors import run_reporting_errors
from zaya1.sharding import check_tp, partition_dim, rank_extras, shard_tensor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--tp-degree", type=int, required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--format", choices=("ranks", "neuron"), default="ranks")
    return run_reporting_errors("convert.py", convert, p.parse_args(argv))


def convert(args) -> int:
    model = ZayaForCausalLM.from_pretrained(args.model_path, dtype=args.dtype)
    config, out, tp = model.config, Path(args.output), args.tp_degree
    check_tp(config, tp)
    state = model.state_dict()
    metadata = {"zaya1_tp_degree": str(tp), "zaya1_config": config.to_json()}
    if args.format == "neuron":
        path = save_state_dict_atomic(neuron_tensors(model, state, tp), out / "neuron_state_dict.safetensors",
                                      metadata)
        print(f"wrote {path}")
        return 0
    for rank in range(tp):  # one rank's shards at a time
        shard = {key: shard_tensor(key, tensor, config, tp, rank) for key, tensor in state.items()}
        path = save_state_dict_atomic(shard | rank_extras(state, config, tp, rank),
                                      out / f"tp{rank}_sharded_checkpoint.safetensors",
                                      metadata | {"zaya1_rank": str(rank)})
        print(f"wrote {path}")
        del shard
    return 0


def neuron_tensors(model, state: dict, tp: int) -> dict:
    """zaya1.sharding.neuron_state_dict's tensors (rank slices concatenated along each partition dim),
    freeing each of the model's tensors as soon as its concatenated copy exists."""
    config, params = model.config, dict(model.named_parameters()) | dict(model.named_buffers())
    extras = [rank_extras(state, config, tp, rank) for rank in range(tp)]  # read q_proj before it is freed
    out = {}
    for key in list(state):
        tensor, dim = state.pop(key), partition_dim(key)
        if dim is None or tp == 1:
            out[key] = tensor
            continue
        out[key] = torch.cat([shard_tensor(key, tensor, config, tp, rank) for rank in range(tp)], dim=dim)
        params[key].data = tensor.new_empty(0)
        del tensor
    for key in extras[0]:
        out[key] = torch.cat([e[key] for e in extras], dim=partition_dim(key))
    return out


if __name__ == "__main__":
    sys.exit(main())
