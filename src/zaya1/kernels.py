"""bf16 matrix products for x86 CPUs without native bf16 arithmetic (no AVX512_BF16 / AMX), where
``F.linear`` on bf16 runs oneDNN's emulated kernel: ~25 GFLOP/s at prefill sizes and a fraction of the
memory bandwidth at decode sizes (a 4-row product over the 1 GB lm_head reads ~2 GB/s).

``linear(x, weight)`` keeps F.linear's semantics (bf16 inputs, fp32 accumulation, one rounding of the result
to bf16) and picks the product by the number of rows M of ``x``:

* M < ``FP32_MIN_ROWS`` (decode): one ``torch.mv`` per row, PyTorch's vectorised bf16 GEMV with fp32
  accumulation, which streams the weight at close to the memory bandwidth.
* otherwise (prefill): the weight is widened to fp32 in blocks of ``BLOCK_ELEMENTS`` (a per-thread workspace
  that stays in cache) and multiplied with fp32 sgemm, ~4x the throughput of the emulated bf16 GEMM.
* under torch.compile (decode step): a multiply-and-sum reduction that inductor turns into one fused kernel
  reading every weight row once for all M rows.

Only the accumulation order differs from F.linear, so results agree to the last bf16 bit except for rare
rounding ties. Every other case (fp32 and fp16 weights, other devices, CPUs with native bf16, tracing for
Neuron, a bias) is plain F.linear, so float32 results are bit-identical to the reference path.
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FP32_MIN_ROWS = 6
REDUCTION_MAX_ROWS = 16  # under torch.compile: larger products go to F.linear
BLOCK_ELEMENTS = 1 << 20  # 4 MB of fp32 weight per sgemm block
_workspace = threading.local()  # simulated tensor parallelism runs ranks in threads


def _emulated_bf16() -> bool:
    """True on x86 CPUs whose bf16 matmuls are emulated (no avx512_bf16 / amx_bf16 flag)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx512_bf16" not in flags and "amx_bf16" not in flags


EMULATED_BF16 = _emulated_bf16()  # read once: torch.compile traces the functions below


def use_cpu_bf16_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and EMULATED_BF16 and not torch.jit.is_tracing())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x [..., K], weight [N, K] -> [..., N]."""
    if bias is not None or not use_cpu_bf16_kernels(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    if torch.compiler.is_compiling():
        out = reduction_matmul(rows, weight) if rows.shape[0] <= REDUCTION_MAX_ROWS else F.linear(rows, weight)
    elif rows.shape[0] < FP32_MIN_ROWS:
        out = rows.new_empty(rows.shape[0], weight.shape[0])
        for row, dest in zip(rows, out):
            torch.mv(weight, row, out=dest)
    else:
        out = fp32_matmul(rows, weight)
    return out.view(*x.shape[:-1], weight.shape[0])


def reduction_matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[M, K] x [N, K]^T as an fp32 multiply-and-sum over K, laid out [N, M] so that the fused kernel walks
    the weight once (each row is reused from cache for all M rows)."""
    products = weight[:, None, :].to(torch.float32) * rows[None, :, :].to(torch.float32)  # [N, M, K]
    return products.sum(-1).t().to(rows.dtype)


def fp32_matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[M, K] x [N, K]^T: weight blocks widened into an fp32 workspace, then sgemm; result rounded once.
    The product is computed as weight @ rows^T ([N, M]): sgemm with few rows in the second operand is
    several times faster than with few rows in the first."""
    n, k = weight.shape
    block = max(1, BLOCK_ELEMENTS // k)
    space = getattr(_workspace, "buffer", None)
    if space is None or space.numel() < min(n, block) * k:
        space = _workspace.buffer = torch.empty(min(n, block) * k, dtype=torch.float32)
    cols = rows.to(torch.float32).t()  # [K, M]
    out = torch.empty(n, rows.shape[0], dtype=torch.float32)
    for start in range(0, n, block):
        part = weight[start:start + block]
        w32 = space[:part.numel()].view(part.shape).copy_(part)
        torch.mm(w32, cols, out=out[start:start + part.shape[0]])
    return out.t().to(rows.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
