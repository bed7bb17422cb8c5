"""bf16 matrix products on CPUs, chosen by measurement on the machine that runs them; no flag needed.

oneDNN's ``F.linear`` is a GEMM kernel; at the few rows of a decode step (and of an expert's share of a
prefill) other products can stream the weight faster, or slower, depending on the CPU: on a Sapphire Rapids
(AMX) ``torch.mv`` and the swapped GEMM beat F.linear by 1.2-1.7x, on a Zen 4 (AVX512_BF16, no AMX) they
take 2-3x as long. So ``linear(x, weight)`` (F.linear's semantics: bf16 inputs, fp32 accumulation, one
rounding of the result to bf16) runs, for bf16 weights on the CPU, whichever of these was fastest for this
weight shape and number of rows M (bucketed to a power of two, ``row_bucket``) on this machine:

* ``linear``: F.linear, the baseline: kept unless another product is measurably faster;
* ``mv``: one ``torch.mv`` (PyTorch's vectorised GEMV) per row, M <= ``MV_MAX_ROWS``;
* ``swapped``: oneDNN's GEMM with the operands swapped, ``weight @ x^T`` (the long weight first),
  M <= ``SWAPPED_MAX_ROWS``;
* ``fp32``: the weight widened to fp32 in cache-sized blocks, then sgemm, M >= 2 (3-4x F.linear on CPUs
  where oneDNN emulates bf16: AVX2-only, AVX-512 without bf16);
* ``fused``: one multiply-and-sum per row over the weight (``fused_rows_matmul``), compiled by inductor into
  a single pass over the weight for all rows, M <= ``FUSED_MAX_ROWS``, weights of ``FUSED_MIN_BYTES`` or
  more (2x F.linear over the lm_head at one row on Zen 4). Its first use compiles it once per weight shape
  and row bucket (seconds; inductor keeps the kernel in its on-disk cache, a later process loads it).

Each choice is measured once, at its first use, on the weight itself (small weights with copies of it, so
that the timed product streams from memory as in a step over many layers, not from cache) and cached on
disk per CPU model and torch version (``autotune``: where, how measured). Every product accumulates in fp32
and rounds once: results agree with F.linear to about one bf16 rounding (checked before a product is
timed), and with the float32 reference at least as closely as transformers' bf16 does
(test/unit/test_accuracy.py). A given choice is deterministic. Under torch.compile the chosen product is
called as the opaque custom op ``zaya1::cpu_bf16_matmul``, or inlined where F.linear or ``fused`` was
chosen (inductor then fuses the latter with its neighbours).

``use_exact_kernels()`` (or ``ZAYA1_EXACT_KERNELS=1``, ``--exact-kernels``) selects F.linear everywhere, the
path that is bit-identical to transformers. Every other case (fp32 and fp16 weights, other devices,
tracing for Neuron, a bias) is plain F.linear, so float32 results are bit-identical to the reference path.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import platform
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from .autotune import Tuner, cpu_info

MV_MAX_ROWS = 4
SWAPPED_MAX_ROWS = 32
FUSED_MAX_ROWS = 16
FUSED_MIN_BYTES = 1 << 20  # smaller weights: the compiled call's fixed cost outweighs what it could save
MAX_BUCKET = 1024  # more rows are measured as this many
BLOCK_ELEMENTS = 1 << 20  # 4 MB of fp32 weight per sgemm block
COLD_BYTES = 64 << 20  # a timed product reads at least this much weight (more than a CPU's last-level cache)
_workspace = threading.local()  # simulated tensor parallelism runs ranks in threads
TUNER = Tuner()
EXACT = os.environ.get("ZAYA1_EXACT_KERNELS", "").strip().lower() not in ("", "0", "false", "no")
NEURON_GRAPH = False  # neuron_graph_numerics()


def cpu_features(cpuinfo: str | None = None, env: dict | None = None) -> dict:
    """What ``zaya1 bench`` reports about the CPU: ``model``, ``isa`` (the /proc/cpuinfo flags that matter for
    bf16 products), ``torch`` (torch's CPU capability) and ``onednn_cap`` (ONEDNN_MAX_CPU_ISA or None).
    Reported only: the products are chosen by measurement."""
    env = os.environ if env is None else env
    info = cpu_info(cpuinfo)
    flags = set(info.get("flags", "").split())
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
            "torch": torch.backends.cpu.get_cpu_capability(),
            "onednn_cap": env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None}


CPU = cpu_features()


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
    """Which bf16 CPU products ``linear`` runs in this process."""
    if EXACT:
        return "exact (F.linear, bit-identical to transformers)"
    return f"measured per product shape on this machine (cache {TUNER.path})"


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


def measured(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where ``linear`` runs the product measured fastest (bf16 on the CPU, fast path)."""
    return (not EXACT and weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16
            and weight.device.type == "cpu" and not torch.jit.is_tracing())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x [..., K], weight [N, K] -> [..., N]."""
    if bias is not None or not measured(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    if not torch.compiler.is_compiling():
        out = matmul(rows, weight)
    else:
        known = cached_choice(*weight.shape, row_bucket(rows.shape[0]))
        if known == "linear":
            out = F.linear(rows, weight)
        elif known == "fused":
            out = fused_rows_matmul(rows, weight)
        else:  # measured (or measured at its first run) inside the operator
            out = torch.ops.zaya1.cpu_bf16_matmul(rows, weight)
    return out.view(*x.shape[:-1], weight.shape[0])


def row_bucket(rows: int) -> int:
    """The row count a product of ``rows`` rows is measured at: the next power of two, at most MAX_BUCKET."""
    return min(1 << max(rows - 1, 0).bit_length(), MAX_BUCKET)


def _key(n: int, k: int, bucket: int) -> str:
    return f"linear bf16 {n}x{k} rows{bucket} threads{torch.get_num_threads()}"


def cached_choice(n: int, k: int, bucket: int) -> str | None:
    """The product measured for weight [n, k] at ``bucket`` rows, None if not yet measured. A constant for
    torch.compile once marked (``torch.compiler.assume_constant_result``, done where zaya1 first compiles: no
    guard on the cache, so entries measured later never recompile a graph)."""
    return TUNER.get(_key(n, k, bucket))


def accurate(out: torch.Tensor, reference: torch.Tensor) -> bool:
    """``out`` agrees with F.linear's ``reference`` to one bf16 rounding of the largest output (both accumulate
    in fp32 and round once, in a different order)."""
    scale = reference.abs().max().float()
    return bool(torch.isfinite(out).all()) and bool((out.float() - reference.float()).abs().max() <= 2 ** -7 * scale)


def choose(weight: torch.Tensor, rows: int) -> str:
    """The product for ``weight`` [N, K] at ``rows`` rows: cached, or measured now on ``weight`` and cached."""
    n, k = weight.shape
    bucket = row_bucket(rows)
    key = _key(n, k, bucket)
    known = TUNER.get(key)
    if known is not None:
        return known
    with torch.no_grad():
        x = torch.randn(bucket, k, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        copies = max(1, min(64, -(-COLD_BYTES // (weight.numel() * weight.element_size()))))
        # every timed call reads the next copy: a copy is read again only after COLD_BYTES of others; the
        # copies are tensors of the weight's kind (inference or not), which compiled products guard on
        with torch.inference_mode(weight.is_inference()):
            weights = itertools.cycle([weight] + [weight.clone() for _ in range(copies - 1)])
        names = [name for name, (low, high) in ROWS.items() if low <= bucket <= high
                 and (name != "fused" or weight.numel() * weight.element_size() >= FUSED_MIN_BYTES)]
        return TUNER.choose(key, {name: functools.partial(_call, PRODUCTS[name], x, weights) for name in names},
                            "linear", accurate)


def _call(product, x: torch.Tensor, weights) -> torch.Tensor:
    return product(x, next(weights))


def matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [M, K] x weight [N, K]^T -> [M, N], both bf16, by the product measured fastest."""
    return PRODUCTS[choose(weight, rows.shape[0])](rows, weight)


# the same function as an operator that torch.compile calls as it is (eager code calls matmul directly)
torch.library.custom_op("zaya1::cpu_bf16_matmul", matmul, mutates_args=()).register_fake(
    lambda rows, weight: rows.new_empty(rows.shape[0], weight.shape[0]))


def mv_rows(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One torch.mv per row."""
    out = rows.new_empty(rows.shape[0], weight.shape[0])
    for row, dest in zip(rows, out):
        torch.mv(weight, row, out=dest)
    return out


def swapped(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(weight @ rows^T)^T: oneDNN's GEMM with the long weight as the first operand."""
    return torch.mm(weight, rows.t()).t().contiguous()


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


_fused_graphs: dict = {}  # (N, K, bucket) -> fused_rows_matmul compiled by inductor for that shape
_compiling = threading.Lock()


def fused(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``fused_rows_matmul`` compiled by inductor once per weight shape and row bucket (rows are zero-padded to
    it), called without torch.compile's guards (a graph of fixed shapes: nothing to check but the shapes)."""
    m = rows.shape[0]
    bucket = row_bucket(m)
    rows = F.pad(rows, (0, 0, 0, bucket - m)) if bucket > m else rows.contiguous()
    key = (*weight.shape, bucket)
    graph = _fused_graphs.get(key)
    if graph is None:
        with _compiling:
            graph = _fused_graphs.get(key) or torch._inductor.compile(
                make_fx(fused_rows_matmul, tracing_mode="fake")(rows, weight), [rows, weight])
            _fused_graphs[key] = graph
    return graph(rows, weight)[:m]


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


PRODUCTS = {"linear": lambda rows, weight: F.linear(rows, weight), "mv": mv_rows, "swapped": swapped,
            "fp32": fp32_matmul, "fused": fused}
ROWS = {"linear": (1, MAX_BUCKET), "mv": (1, MV_MAX_ROWS), "swapped": (2, SWAPPED_MAX_ROWS),
        "fp32": (2, MAX_BUCKET), "fused": (1, FUSED_MAX_ROWS)}  # the row counts each product is a candidate at


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
