"""The KV description a native model gives the plugin's runner (``get_kv_spec``), and the page plan it implies.

The dataclasses have the fields of the plugin's own (``vllm_neuron/model/kv_cache.py``, read at
qingzwang/vllm-neuron@76172ca and RunanywhereAI/NotVllm-neuron@01048a0; the file is not in the released
package's public tree): ``ZayaNativeForCausalLM.get_kv_spec`` converts to the plugin's classes when it is
installed and returns these otherwise (CPU emulation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerSpec:
    """Paged K/V of one attention layer, per rank (``num_kv_heads`` after TP sharding / replication)."""

    name: str
    num_kv_heads: int
    head_size: int
    dtype: torch.dtype
    sliding_window_size: int | None = None
    chunk_size: int | None = None


@dataclass
class RecurrentLayerSpec:
    """Per-sequence state of one layer (vLLM's MambaSpec): one shape and dtype per state tensor, per rank."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]


@dataclass
class KVSpec:
    layers: list[LayerSpec]
    recurrent_layers: list[RecurrentLayerSpec] = field(default_factory=list)


def kv_page_bytes(spec: LayerSpec, block_size: int) -> int:
    """Bytes of one attention page: K and V of ``block_size`` tokens."""
    return 2 * spec.num_kv_heads * block_size * spec.head_size * spec.dtype.itemsize


def state_bytes(spec: RecurrentLayerSpec) -> int:
    return sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in zip(spec.shapes, spec.dtypes))


def min_block_size(kv: KVSpec) -> int:
    """The smallest block size whose attention page holds a layer's CCA state: vLLM pads every page of a
    hybrid model to one size (``_align_hybrid_block_size``), so a state page is an attention page."""
    per_token = min(kv_page_bytes(layer, 1) for layer in kv.layers)
    need = max(state_bytes(state) for state in kv.recurrent_layers)
    return -(-need // per_token)
