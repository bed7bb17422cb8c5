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

from zaya1 import ZayaConfig, ZayaForCausalLM
from zaya1.atomic import save_state_dict_atomic
from zaya1.errors import run_reporting_errors
from zaya1.sharding import check_tp, neuron_state_dict, rank_state_dict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--tp-degree", type=int, required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--format", choices=("ranks", "neuron"), default="ranks")
    return run_reporting_errors("convert.py", convert, p.parse_args(argv))


def convert(args) -> int:
    check_tp(ZayaConfig.from_pretrained(args.model_path), args.tp_degree)  # before the weights are read
    model = ZayaForCausalLM.from_pretrained(args.model_path, dtype=args.dtype)
    config, out, tp = model.config, Path(args.output), args.tp_degree
    state = model.state_dict()
    del model  # the state dict now holds the only references to the weights
    metadata = {"zaya1_tp_degree": str(tp), "zaya1_config": config.to_json()}
    if args.format == "neuron":
        path = save_state_dict_atomic(neuron_state_dict(state, config, tp, consume=True),
                                      out / "neuron_state_dict.safetensors", metadata)
        print(f"wrote {path}")
        return 0
    for rank in range(tp):  # one rank's shards at a time
        path = save_state_dict_atomic(rank_state_dict(state, config, tp, rank),
                                      out / f"tp{rank}_sharded_checkpoint.safetensors",
                                      metadata | {"zaya1_rank": str(rank)})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
