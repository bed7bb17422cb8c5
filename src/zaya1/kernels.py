"""bf16 matrix products for x86 CPUs without native bf16 arithmetic (no AVX512_BF16 / AMX), where
``F.linear`` on bf16 runs oneDNN's emulated kernel: ~25 GFLOP/s at prefill sizes and, at decode sizes, a
fraction of the memory bandwidth (a 4-row product over the 1 GB lm_head streams ~3 GB/s).

``linear(x, weight)`` keeps F.linear's semantics (bf16 inputs, fp32 accumulation, one rounding of the
result to bf16) and picks the product by the number of rows M of ``x`` (``matmul``):

* M < ``FP32_MIN_ROWS`` (decode): one ``torch.mv`` per row, PyTorch's vectorised bf16 GEMV with fp32
  accumulation, which streams the weight at the memory bandwidth.
* otherwise (prefill): the weight is widened to fp32 in blocks of ``BLOCK_ELEMENTS`` (a per-thread
  workspace that stays in cache) and multiplied with fp32 sgemm, 3-4x the emulated bf16 GEMM.
* under torch.compile (the decode step), 2 <= M <= ``FUSED_MAX_ROWS``: one multiply-and-sum per row over
  the same weight (``fused_rows_matmul``), which inductor fuses into a single kernel that reads and widens
  each weight element once for all rows. M = 1 and larger M call ``matmul`` as the opaque custom op
  ``zaya1::cpu_bf16_matmul`` (inductor would otherwise lower mv to a slower reduction of its own).

Only the accumulation order differs from F.linear, so results agree with it to about one bf16 rounding --
enough to flip a near-tied route or greedy token now and then, so the kernels are opt-in
(``use_fast_bf16()``; ``zaya1 bench`` and ``zaya1 generate --fast-kernels`` turn them on). Every other case (fp32 and fp16 weights, other devices, CPUs with native bf16, tracing for Neuron, a bias)
is plain F.linear, so float32 results are bit-identical to the reference path.
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FP32_MIN_ROWS = 6
FUSED_MAX_ROWS = 16
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
FAST_BF16 = False  # off by default: bf16 results then equal F.linear's (and upstream transformers') bit for bit


def use_fast_bf16(enabled: bool = True) -> None:
    """Use the fast bf16 CPU kernels in this process (where the CPU emulates bf16), or F.linear again."""
    global FAST_BF16
    FAST_BF16 = enabled


def use_cpu_bf16_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (FAST_BF16 and EMULATED_BF16 and weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16
            and weight.device.type == "cpu" and not torch.jit.is_tracing())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x [..., K], weight [N, K] -> [..., N]."""
    if bias is not None or not use_cpu_bf16_kernels(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    if not torch.compiler.is_compiling():
        out = matmul(rows, weight)
    elif 1 < rows.shape[0] <= FUSED_MAX_ROWS:
        out = fused_rows_matmul(rows, weight)
    else:
        out = torch.ops.zaya1.cpu_bf16_matmul(rows, weight)
    return out.view(*x.shape[:-1], weight.shape[0])


def matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [M, K] x weight [N, K]^T -> [M, N], both bf16."""
    if rows.shape[0] >= FP32_MIN_ROWS:
        return fp32_matmul(rows, weight)
    out = rows.new_empty(rows.shape[0], weight.shape[0])
    for row, dest in zip(rows, out):
        torch.mv(weight, row, out=dest)
    return out


# the same function as an operator that torch.compile calls as it is (eager code calls matmul directly)
torch.library.custom_op("zaya1::cpu_bf16_matmul", matmul, mutates_args=()).register_fake(
    lambda rows, weight: rows.new_empty(rows.shape[0], weight.shape[0]))


def fused_rows_matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [M, K] x weight [N, K]^T written for inductor: M multiply-and-sum reductions over the same
    (widened, never materialised) weight, which it fuses horizontally into one pass over the weight."""
    wide = weight.to(torch.float32)
    return torch.stack([(wide * row).sum(-1) for row in widen(rows)]).to(rows.dtype)


@torch.library.custom_op("zaya1::widen", mutates_args=())
def widen(x: torch.Tensor) -> torch.Tensor:
    """x as fp32. An operator boundary for inductor: without it, it fuses the (cheap) computation of x into
    a reduction that reads every element of x once per weight row, recomputing it N times."""
    return x.to(torch.float32)


@widen.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.float32)


def fp32_matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [M, K] x weight [N, K]^T: weight blocks widened into an fp32 workspace, then sgemm; the result
    is rounded once. Computed as weight @ rows^T ([N, M]): sgemm with few rows in the second operand is
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
        wide = space[:part.numel()].view(part.shape).copy_(part)
        torch.mm(wide, cols, out=out[start:start + part.shape[0]])
    return out.t().to(rows.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
