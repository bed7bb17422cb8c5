"""Quantized expert weights: compressed-tensors checkpoints whose MoE experts are stored in fp8 or mxfp4
(ZAYA1-8B-FP8-Experts, ZAYA1-8B-MXFP4-Experts). Only the experts may be quantized; every other weight is
dense. The experts stay in their stored format in memory and are dequantized where a step uses them.

The formats, as config.json's ``quantization_config`` (``quant_method`` "compressed-tensors") declares them:

* ``fp8``: format ``float-quantized`` (``naive-quantized`` when weight-only), 8-bit float weights (e4m3), one
  scale per output row (strategy
  ``channel``) or per module (``tensor``). Per expert module: ``weight`` (float8_e4m3fn [N, K]) and
  ``weight_scale`` ([N, 1] or [1]). w = q * scale, computed in float32, then the model dtype.
* ``mxfp4``: format ``mxfp4-pack-quantized``, 4-bit float weights (e2m1) in groups of 32 columns. Per expert
  module: ``weight_packed`` (uint8 [N, K / 2], two codes a byte, the even column in the low nibble) and
  ``weight_scale`` (uint8 [N, K / 32], e8m0: 2 ** (s - 127)). w = e2m1(code) * 2 ** (s - 127).

``quantize_fp8`` writes fp8 experts from dense ones (``from_pretrained(expert_dtype="fp8")``, ``zaya1 compile
--expert-dtype fp8``) with compressed-tensors' arithmetic for its fp8 channel scheme (llm-compressor's
FP8_DYNAMIC weights), so a bf16 checkpoint quantized here holds the codes and scales that compressed-tensors
writes for it (test_quantized_experts.py compares them bit for bit).

Both are the dequantization transformers' loader applies to compressed-tensors MoE experts (its
``CompressedTensorsDequantize``, itself compressed-tensors' decompressor for mxfp4); activations are not
quantized (dynamic input-activation schemes such as FP8_DYNAMIC are computed from unquantized activations,
as transformers does). config.py reads the scheme (``expert_format``) and refuses anything else;
checkpoint.py names the tensors.
"""

from __future__ import annotations

import functools
import threading

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from .config import FP8, MX_GROUP
from . import kernels
from .kernels import neuron_graph

# e2m1 magnitudes by the code's low three bits; bit 3 is the sign
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_CODES = torch.tensor(E2M1 + tuple(-v for v in E2M1))  # by 4-bit code
_BYTES = torch.stack([_CODES.repeat(16), _CODES.repeat_interleave(16)], dim=-1)  # byte -> (low, high) [256, 2]
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def storage(kind: str, rows: int, cols: int) -> tuple[tuple[int, int, torch.dtype], tuple[int, int, torch.dtype]]:
    """(rows, columns, dtype) of the codes and of the scales of one expert's weight [rows, cols]."""
    if kind == FP8:
        return (rows, cols, torch.float8_e4m3fn), (rows, 1, torch.float32)
    return (rows, cols // 2, torch.uint8), (rows, cols // MX_GROUP, torch.uint8)


def dequantize(kind: str, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
               table: torch.Tensor = _BYTES) -> torch.Tensor:
    """codes [..., N, K'] and scales [..., N, S] -> dense weights [..., N, K] in ``dtype`` (``table``: the
    mxfp4 byte decoder, an input of compiled graphs)."""
    if kind == FP8:
        return (codes.to(torch.float32) * scale.to(torch.float32)).to(dtype)
    # one table lookup per byte (4x faster than unpacking nibbles on CPU)
    values = torch.index_select(table.to(codes.device), 0, codes.reshape(-1).to(torch.int32))
    values = values.view(*codes.shape[:-1], 2 * codes.shape[-1])  # [..., N, K]
    factor = torch.exp2(scale.to(torch.float32) - 127)  # exact powers of two
    return (values.unflatten(-1, (-1, MX_GROUP)) * factor[..., None]).flatten(-2).to(dtype)


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weights [..., N, K] -> (codes float8_e4m3fn [..., N, K], row scales float32 [..., N, 1]),
    computed in ``weight``'s dtype as compressed-tensors does (``calculate_qparams`` then ``_quantize``):
    scale = max |row| / 448 (a zero row takes the dtype's eps), codes = clamp(w / scale, -448, 448) in e4m3.
    The only format zaya1 writes (``config.QUANTIZE_TO``, checked by ``ZayaConfig.with_expert_dtype``)."""
    scale = weight.abs().amax(-1, keepdim=True) / FP8_MAX
    scale = torch.where(scale == 0, torch.finfo(scale.dtype).eps, scale)
    codes = torch.clamp(weight / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes, scale.to(torch.float32)


_graphs: dict = {}  # (format, codes shape, scale shape, dtype) -> ``dequantize`` compiled by inductor
_compiling = threading.Lock()


def compiled_dequantize(kind: str, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``dequantize`` compiled by inductor once per format, shapes and dtype (one vectorised pass; eager
    PyTorch converts fp8 element by element), called without torch.compile's guards (fixed shapes)."""
    codes, scale = codes.contiguous(), scale.contiguous()  # the layout the graph is compiled for
    key = (kind, tuple(codes.shape), tuple(scale.shape), dtype)
    graph = _graphs.get(key)
    if graph is None:
        with _compiling:
            graph = _graphs.get(key) or torch._inductor.compile(
                make_fx(lambda c, s, t: dequantize(kind, c, s, dtype, t), tracing_mode="fake")(codes, scale, _BYTES),
                [codes, scale, _BYTES])
            _graphs[key] = graph
    return graph(codes, scale, _BYTES)


def dequantize_on_cpu(kind: str, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``dequantize`` of eager CPU code by the faster of eager and ``compiled_dequantize``, measured once per
    shape on this machine (kernels.TUNER; the compiled graph must give the same bits)."""
    key = f"dequantize {kind} {'x'.join(map(str, codes.shape))} {dtype} threads{torch.get_num_threads()}"
    calls = {"eager": functools.partial(dequantize, kind, codes, scale, dtype),
             "compiled": functools.partial(compiled_dequantize, kind, codes, scale, dtype)}
    return calls[kernels.TUNER.choose(key, calls, "eager", torch.equal)]()


class QuantizedWeight(nn.Module):
    """A stacked expert weight [E, N, K] kept as stored (``codes``, ``scale``: see ``storage``; buffers, frozen
    parameters under NxD). Indexing dequantizes: ``w[idx]`` is the dense weight of the experts ``idx``
    selects, in the model dtype, so the experts' code reads it as it reads a dense parameter. A model dtype
    cast (``model.to(torch.bfloat16)``) changes that compute dtype and leaves the stored tensors as they are."""

    def __init__(self, kind: str, experts: int, rows: int, cols: int):
        super().__init__()
        (cr, cc, cdt), (sr, sc, sdt) = storage(kind, rows, cols)
        self.kind, self.shape, self.dtype = kind, torch.Size((experts, rows, cols)), torch.get_default_dtype()
        self.register_buffer("codes", torch.empty(experts, cr, cc, dtype=cdt))
        self.register_buffer("scale", torch.empty(experts, sr, sc, dtype=sdt))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def stored(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scale) of the experts ``index`` selects; a 1-D index tensor through index_select (torch
        < 2.10 has no advanced indexing of fp8 tensors on CPU, which NxDI's CPU mode runs)."""
        if isinstance(index, torch.Tensor) and index.dim() == 1:
            return torch.index_select(self.codes, 0, index), torch.index_select(self.scale, 0, index)
        return self.codes[index], self.scale[index]

    def __getitem__(self, index) -> torch.Tensor:
        codes, scale = self.stored(index)
        if codes.device.type == "cpu" and not (torch.compiler.is_compiling() or neuron_graph(codes)):
            return dequantize_on_cpu(self.kind, codes, scale, self.dtype)
        return dequantize(self.kind, codes, scale, self.dtype)

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.codes.device))
        stored = {name: getattr(self, name).data for name in ("codes", "scale")}  # .data: a parameter is cast in place
        super()._apply(fn, recurse)
        for name, before in stored.items():
            if getattr(self, name).dtype != before.dtype:  # a dtype cast: keep the stored format
                kept = before.to(getattr(self, name).device)
                # parameters on NxD (zaya1.neuron.modeling.mark_sharded), buffers otherwise
                setattr(self, name, nn.Parameter(kept, requires_grad=False) if name in self._parameters else kept)
        self.dtype = probe.dtype
        return self

    def extra_repr(self) -> str:
        return f"{self.kind}, experts={self.shape[0]}, rows={self.shape[1]}, cols={self.shape[2]}"
