"""The native compile route as far as public packages reach: one bucket's step graph, functionalised by
torch.export (Dynamo's front end and AOTAutograd's functionalisation, as TorchNeuron's native route), imported
to StableHLO by torch-mlir (``torch_mlir.fx.export_and_import(..., output_type="stablehlo")``), the importer
that route uses before neuronx-cc. What neuronx-cc would make of it cannot be run here.

The exported graph takes the weights and every layer's page pool as inputs (nothing is baked in), and
returns the updated pools (the in-place page writes, functionalised). ``inventory`` reads the StableHLO text:
op counts, custom calls, dynamic dimensions, and the bytes a step reads: every weight argument that is
used other than through a gather, plus the result of every gather (pages, expert weights and embedding rows
are read only where gathered).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels import exact_kernels, neuron_graph_numerics
from .model import ZayaNativeForCausalLM, attention_name, state_name

_ELEMENT_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1,
                  "ui8": 1, "ui32": 4, "ui64": 8, "f8E4M3FN": 1}


@dataclass(frozen=True)
class Bucket:
    """One compiled graph: ``rows`` x ``query`` tokens (prefill: 1 x bucket; decode: batch x 1), block tables
    ``context`` tokens wide."""

    rows: int
    query: int
    context: int
    block_size: int = 16
    state_block: int = 16

    @property
    def name(self) -> str:
        kind = f"prefill{self.query}" if self.query > 1 else f"decode_b{self.rows}"
        return f"{kind}_ctx{self.context}"


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (fp8 expert codes and scales are buffers): the graph's weight inputs."""
    return {name: t.detach() for name, t in [*model.named_parameters(), *model.named_buffers()]}


class BucketStep(nn.Module):
    """``ZayaNativeForCausalLM.forward`` of one bucket as a function of tensors only: the weights, the step's
    inputs and each layer's page pool [pages, elems] (the attention and state views of one pool)."""

    def __init__(self, model: ZayaNativeForCausalLM, bucket: Bucket):
        super().__init__()
        self.model, self.bucket = model, bucket
        self.names = list(weights(model))
        layer = model.get_kv_spec().layers[0]
        self.page_shape = (2, layer.num_kv_heads, bucket.block_size, layer.head_size)

    def example_inputs(self) -> tuple:
        b, model = self.bucket, self.model
        tokens = b.rows * b.query
        pages = b.context // b.block_size + 3  # the table's blocks, the null block, the two private pages
        elems = torch.Size(self.page_shape).numel()
        pools = [torch.zeros(pages, elems, dtype=model.dtype) for _ in range(model.config.num_hidden_layers)]
        return (*weights(model).values(), torch.zeros(tokens, dtype=torch.int32), torch.zeros(tokens, dtype=torch.long),
                torch.zeros(tokens, dtype=torch.long), torch.zeros(b.rows, b.context // b.block_size, dtype=torch.int32),
                torch.zeros(b.rows, b.context // b.state_block, dtype=torch.int32),
                torch.arange(b.rows) * b.query, torch.tensor([[-1.0, 1.0, 0.0]]).repeat(b.rows, 1), *pools)

    def forward(self, *tensors):
        count, b = len(self.names), self.bucket
        weights, (ids, positions, slots, attn_table, state_table, sampling_positions, params), pools = (
            tensors[:count], tensors[count:count + 7], tensors[count + 7:])
        attn = {"block_table_tensor": attn_table, "slot_mapping": slots, "max_query_len": b.query,
                "block_size": b.block_size, "decode_token_threshold": 1, "kv_segment_size": 0}
        state = attn | {"block_table_tensor": state_table, "block_size": b.state_block}
        layers = range(len(pools))
        meta = {attention_name(i): attn for i in layers} | {state_name(i): state for i in layers}
        kv = [pool.view(pool.shape[0], *self.page_shape) for pool in pools]
        with torch.nn.utils.stateless._reparametrize_module(self.model, dict(zip(self.names, weights))):
            return self.model.step(kv, list(pools), ids, positions, meta, sampling_positions, params)


def export_stablehlo(model: ZayaNativeForCausalLM, bucket: Bucket) -> str:
    """The bucket's functionalised step graph in StableHLO (text), via torch-mlir, with a Neuron graph's
    numerics: F.linear products (the CPU's own bf16 kernels are not part of it), the q/k norm in fp32, the
    cache read in place."""
    from torch_mlir import fx  # optional: the test extra

    step = BucketStep(model, bucket)
    with exact_kernels(), neuron_graph_numerics():
        return str(fx.export_and_import(step, *step.example_inputs(), output_type="stablehlo",
                                        func_name=bucket.name))


@dataclass
class Inventory:
    ops: Counter
    custom_calls: int
    dynamic_dims: int
    weight_bytes: int  # weight arguments read whole
    gathered_bytes: int  # results of gathers (pages, expert weights, embedding rows)

    @property
    def bytes_read(self) -> int:
        return self.weight_bytes + self.gathered_bytes


def _tensor_bytes(type_text: str) -> int:
    """'tensor<2x4x128xbf16>' -> bytes (a scalar tensor<f32> is one element)."""
    body = type_text[type_text.index("<") + 1:type_text.rindex(">")]
    *dims, element = body.split("x")
    count = 1
    for dim in dims:
        count *= int(dim)
    return count * _ELEMENT_BYTES[element]


def inventory(text: str, weight_args: int) -> Inventory:
    """Op counts and bytes read of a StableHLO module whose first ``weight_args`` arguments are weights
    (``len(weights(model))``)."""
    ops = Counter(re.findall(r"stablehlo\.([a-z_]+)", text))
    signature = re.search(r"func\.func @\w+\((.*?)\)\s*->", text, re.S).group(1)
    args = re.findall(r"(%arg\d+): (tensor<[^>]*>)", signature)
    weight_bytes = 0
    for name, type_text in args[:weight_args]:
        uses = re.findall(rf"= (\"?[\w.]+\"?)\(?[^\n]*{name}\b", text)
        if any("gather" not in use for use in uses):
            weight_bytes += _tensor_bytes(type_text)
    gathered = sum(_tensor_bytes(t) for t in re.findall(r"stablehlo\.gather.*?->\s*(tensor<[^>]*>)", text))
    dynamic = len(re.findall(r"tensor<[^>]*\?", text))
    return Inventory(ops, ops.get("custom_call", 0), dynamic, weight_bytes, gathered)
