"""bf16 matrix products on x86 CPUs, chosen by what the CPU has; no flag needed.

oneDNN's ``F.linear`` is a GEMM kernel: at the few rows of a decode step (and of an expert's share of a
prefill) it streams the weight well below the memory bandwidth. ``linear(x, weight)`` keeps F.linear's
semantics (bf16 inputs, fp32 accumulation, one rounding of the result to bf16) and picks the product by the
number of rows M of ``x`` and by the CPU (``matmul``):

* M = 1, every x86 CPU: ``torch.mv``, PyTorch's vectorised bf16 GEMV, which streams the weight at the
  memory bandwidth (1.2-1.7x F.linear on Sapphire Rapids).
* CPUs with native bf16 (AVX512_BF16 or AMX, e.g. Sapphire Rapids, Zen 4), 2 <= M <= ``SWAPPED_MAX_ROWS``:
  oneDNN's GEMM with the operands swapped, ``weight @ x^T`` (the long weight as the first operand), 1.3-1.5x
  F.linear; larger M: F.linear on the bf16 units.
* CPUs without them (AVX2-only, e.g. Zen 3; AVX-512 without bf16, e.g. Skylake-SP), where oneDNN emulates
  bf16 (~25 GFLOP/s at prefill sizes, ~3 GB/s for a 4-row product over the 1 GB lm_head): M < ``FP32_MIN_ROWS``
  one ``torch.mv`` per row; otherwise the weight is widened to fp32 in blocks of ``BLOCK_ELEMENTS`` (a
  per-thread workspace that stays in cache) and multiplied with fp32 sgemm, 3-4x the emulated bf16 GEMM.
* under torch.compile (the decode step) on those CPUs, 2 <= M <= ``FUSED_MAX_ROWS``: one multiply-and-sum
  per row over the same weight (``fused_rows_matmul``), which inductor fuses into a single kernel that
  reads and widens each weight element once for all rows. Other cases call ``matmul`` as the opaque custom
  op ``zaya1::cpu_bf16_matmul`` (inductor would otherwise lower mv to a slower reduction of its own).

Only the accumulation order differs from F.linear: results agree with it to about one bf16 rounding, and
with the float32 reference at least as closely as transformers' bf16 does (test/unit/test_accuracy.py).
``use_exact_kernels()`` (or ``ZAYA1_EXACT_KERNELS=1``, ``--exact-kernels``) selects F.linear everywhere, the
path that is bit-identical to transformers. Every other case (fp32 and fp16 weights, other devices,
tracing for Neuron, a bias) is plain F.linear, so float32 results are bit-identical to the reference path.

Detection (``cpu_features``): the /proc/cpuinfo flags, capped by oneDNN's ``ONEDNN_MAX_CPU_ISA`` when it is
set (an ISA cap that makes oneDNN emulate bf16 also selects the emulated-bf16 kernels), and torch's
``torch.backends.cpu.get_cpu_capability()`` for what its own vectorised kernels use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FP32_MIN_ROWS = 4  # emulated bf16: fp32-block sgemm from 4 rows (lm_head, capped AVX2: 158 ms vs 263 for 4 mv)
FUSED_MAX_ROWS = 16
SWAPPED_MAX_ROWS = 16  # native bf16: weight @ x^T up to here (measured 1.3-1.5x F.linear at 2-16 rows)
BLOCK_ELEMENTS = 1 << 20  # 4 MB of fp32 weight per sgemm block
_workspace = threading.local()  # simulated tensor parallelism runs ranks in threads
# oneDNN ISA caps below which its bf16 matmul is emulated (ONEDNN_MAX_CPU_ISA values, oneDNN's docs)
_EMULATING_ISA_CAPS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_features(cpuinfo: str | None = None, machine: str | None = None, env: dict | None = None) -> dict:
    """What the CPU offers bf16 matmuls: ``model``, ``isa`` (the relevant /proc/cpuinfo flags), ``torch``
    (torch's CPU capability), ``onednn_cap`` (ONEDNN_MAX_CPU_ISA or None) and ``native_bf16`` (oneDNN runs
    bf16 GEMMs on bf16 units: AVX512_BF16 or AMX present and not capped away). Arguments override the
    machine's values (tests)."""
    env = os.environ if env is None else env
    machine = (platform.machine() if machine is None else machine).lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    flags = re.search(r"flags\s*:\s*(.+)", cpuinfo)
    flags = set(flags.group(1).split()) if flags else set()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None
    x86 = machine in ("x86_64", "amd64")
    native = x86 and bool({"avx512_bf16", "amx_bf16"} & flags) and cap not in _EMULATING_ISA_CAPS
    return {"model": model.group(1).strip() if model else platform.processor() or machine, "isa": isa,
            "torch": torch.backends.cpu.get_cpu_capability(), "onednn_cap": cap, "x86": x86,
            "native_bf16": native}


def _emulated_bf16(features: dict) -> bool:
    """True on x86 CPUs whose bf16 matmuls oneDNN emulates (no usable avx512_bf16 / amx_bf16); False where
    nothing is known (/proc/cpuinfo unreadable: F.linear, the safe choice)."""
    return features["x86"] and bool(features["isa"]) and not features["native_bf16"]


CPU = cpu_features()  # read once: torch.compile traces the functions below
EMULATED_BF16 = _emulated_bf16(CPU)
NATIVE_BF16 = CPU["native_bf16"]
EXACT = os.environ.get("ZAYA1_EXACT_KERNELS", "").strip().lower() not in ("", "0", "false", "no")


NEURON_GRAPH = False  # neuron_graph_numerics()


def use_exact_kernels(enabled: bool = True) -> None:
    """F.linear for every product in this process (bit-identical to transformers), or the CPU's fast path
    again with ``enabled=False``."""
    global EXACT
    EXACT = enabled


@contextlib.contextmanager
def exact_kernels(enabled: bool = True):
    """``use_exact_kernels(enabled)`` inside the block; the previous choice is restored after."""
    previous = EXACT
    use_exact_kernels(enabled)
    try:
        yield
    finally:
        use_exact_kernels(previous)


def kernel_mode() -> str:
    """Which bf16 CPU products ``linear`` runs in this process: fast, native (F.linear on bf16 units) or exact."""
    if EXACT:
        return "exact (F.linear, bit-identical to transformers)"
    if EMULATED_BF16:
        return "fast (zaya1 kernels: torch.mv decode, fp32 sgemm prefill; this CPU emulates bf16 in oneDNN)"
    if NATIVE_BF16:
        return (f"fast native (torch.mv at 1 row, oneDNN weight @ x^T up to {SWAPPED_MAX_ROWS} rows, F.linear on "
                f"the bf16 units above)")
    return "F.linear (no x86 bf16 features detected)"


def fp32_internals(x: torch.Tensor) -> bool:
    """True where a half-precision model computes its small, decision-making parts in fp32: the router MLP
    (so that bf16 rounding flips fewer expert choices) and the attention scores (fused SDPA, fp32 inside).
    Off under ``use_exact_kernels()`` (op-for-op transformers' eager numerics), off Neuron (XLA devices,
    tracing) so that the traced graphs are unchanged."""
    return (not EXACT and x.dtype in (torch.bfloat16, torch.float16) and x.device.type in ("cpu", "cuda")
            and not torch.jit.is_tracing())


def neuron_graph(x: torch.Tensor) -> bool:
    """True while x is part of a graph built for Neuron (an XLA or Neuron device, jit tracing, or inside
    ``neuron_graph_numerics()``), where the compiler, not PyTorch's kernels, chooses how a half-precision op
    accumulates, and the KV cache is read in place."""
    return NEURON_GRAPH or x.device.type in ("xla", "neuron") or torch.jit.is_tracing()


@contextlib.contextmanager
def neuron_graph_numerics():
    """Compute as a Neuron graph does, on any device (fp32 q/k norm, the cache read in place): the CPU
    reference of a device's numerics, and graphs exported for Neuron from CPU tensors."""
    global NEURON_GRAPH
    previous, NEURON_GRAPH = NEURON_GRAPH, True
    try:
        yield
    finally:
        NEURON_GRAPH = previous


def _cpu_bf16(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (not EXACT and weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16
            and weight.device.type == "cpu" and not torch.jit.is_tracing())


def use_cpu_bf16_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where this product runs zaya1's emulated-bf16 kernels (a CPU without bf16 units)."""
    return EMULATED_BF16 and _cpu_bf16(x, weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x [..., K], weight [N, K] -> [..., N]."""
    if bias is not None or not ((EMULATED_BF16 or NATIVE_BF16) and _cpu_bf16(x, weight)):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    if not torch.compiler.is_compiling():
        out = matmul(rows, weight)
    elif EMULATED_BF16 and 1 < rows.shape[0] <= FUSED_MAX_ROWS:
        out = fused_rows_matmul(rows, weight)
    else:
        out = torch.ops.zaya1.cpu_bf16_matmul(rows, weight)
    return out.view(*x.shape[:-1], weight.shape[0])


def matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [M, K] x weight [N, K]^T -> [M, N], both bf16."""
    m = rows.shape[0]
    if not EMULATED_BF16 and m > 1:
        if m <= SWAPPED_MAX_ROWS:
            return torch.mm(weight, rows.t()).t().contiguous()
        return F.linear(rows, weight)
    if m >= FP32_MIN_ROWS:
        return fp32_matmul(rows, weight)
    out = rows.new_empty(m, weight.shape[0])
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
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
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
