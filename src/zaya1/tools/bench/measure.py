"""Measurements of the machine and of one generate call (bandwidth, GEMM peak, load, peak RSS) and the
analytic bounds they are compared with (bytes a decode step must read, the prefill floor)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ... import kernels
from ...config import ZayaConfig


def describe_machine() -> str:
    """The CPU (model, the ISA flags that matter for bf16 matmuls, torch's capability, any oneDNN ISA cap),
    how zaya1 picks its bf16 products on it, and the software, as one line."""
    ram = None
    with contextlib.suppress(OSError, AttributeError):
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    cpu = kernels.CPU
    cap = f", ONEDNN_MAX_CPU_ISA={cpu['onednn_cap']}" if cpu["onednn_cap"] else ""
    return (f"machine: {cpu['model']}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {ram} GiB "
            f"RAM; CPU features {'/'.join(cpu['isa']) or '-'}, torch capability {cpu['torch']}{cap}; zaya1 kernels: "
            f"{kernels.kernel_mode()}; torch {torch.__version__}, python {platform.python_version()}")


def sync_for(device: str):
    """What waits for the device's queued work: torch.cuda.synchronize on cuda, nothing on CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _timed(fn, repeats: int, sync) -> list[float]:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


class Bandwidth:
    """Memory bandwidth on a ``nbytes`` buffer, measured at start-up (``measure``) and again between the
    timed runs (``sample``), so that the ceiling is observed under the same load as the runs.

    ``copy_gbs``: copy into a preallocated tensor, bytes read plus bytes written (STREAM's convention),
    median of ``repeats``. ``read_gbs``: the best read-only pass over all samples, of two kernels: an fp32
    sum and a bf16 GEMV (the product that streams the weights at decode). It is the ceiling for streaming
    weights, so the best observed pass counts (other processes only ever lower it)."""

    def __init__(self, nbytes: int = 1 << 30, device: str = "cpu"):
        self.nbytes, self.sync = nbytes, sync_for(device)
        self.src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        self.matrix = self.src.view(torch.bfloat16).view(-1, 2048)  # the same bytes as bf16 rows
        self.vector = torch.ones(2048, dtype=torch.bfloat16, device=device)
        self.copy_gbs, self.samples = None, []

    def measure(self, repeats: int = 5) -> "Bandwidth":
        dst = torch.empty_like(self.src)
        copy = statistics.median(_timed(lambda: dst.copy_(self.src), repeats, self.sync))
        self.copy_gbs = 2 * self.nbytes / copy / 1e9
        self.sample(repeats)
        return self

    def sample(self, repeats: int = 2) -> None:
        """One read-bandwidth sample (GB/s, the best of ``repeats`` passes of each kernel)."""
        best = min(min(_timed(lambda: self.src.sum(), repeats, self.sync)),
                   min(_timed(lambda: torch.mv(self.matrix, self.vector), repeats, self.sync)))
        self.samples.append(self.nbytes / best / 1e9)

    @property
    def read_gbs(self) -> float:
        return max(self.samples)

    def spread(self) -> float:
        """Lowest sample / highest: 1 on a quiet machine, lower when other processes compete for memory."""
        return min(self.samples) / max(self.samples)


def measure_matmul_peak(size: int = 2048, repeats: int = 5, device: str = "cpu",
                        dtypes: tuple = (torch.float32,)) -> float:
    """The best GEMM throughput (GFLOP/s) of a size^3 product over ``dtypes`` (median of ``repeats`` each): the
    compute ceiling of the prefill floor (fp32 sgemm where bf16 is emulated, bf16 on bf16 units)."""
    sync = sync_for(device)
    best = 0.0
    for dtype in dtypes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        best = max(best, 2 * size ** 3 / statistics.median(_timed(lambda: torch.mm(a, b), repeats, sync)) / 1e9)
    return best


def load_average() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


def expected_distinct_experts(num_experts: int, tokens: int) -> float:
    """Distinct experts hit by ``tokens`` top-1 tokens routed uniformly at random: E (1 - (1 - 1/E)^T)
    (1 at T=1, at most min(T, E))."""
    return num_experts * (1 - (1 - 1 / num_experts) ** tokens)


def decode_bytes(cfg: ZayaConfig, batch: int, context: int, itemsize: int) -> dict:
    """Bytes one decode step of ``batch`` sequences must read, by part (weights in ``itemsize`` bytes):
    lm_head (tied embedding, read once), the embedding rows, per layer the attention projections, CCA convs,
    router, norms and residual scales, and the expected distinct experts (uniform top-1 routing, see
    ``expected_distinct_experts``; the skip class reads nothing), plus the KV cache of ``context`` tokens
    per sequence and the conv/value state."""
    h, d, layers = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    nq, nkv, r, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.router_hidden_size, cfg.num_experts
    channels = (nq + nkv) * d
    attention = (h * nq * d + h * nkv * d + h * nkv * d + nq * d * h  # q, k, v (current + delayed), o
                 + channels * cfg.cca_time0 + channels * d * cfg.cca_time1 + 2 * channels + nkv)  # convs, temp
    router = h * r + r + r + 2 * (r * r + r) + r * cfg.num_router_classes  # down, norm, fc1, fc2, out_proj
    norms = 2 * h + 8 * h  # two RMSNorms, two residual merges of four vectors
    expert = 3 * h * cfg.moe_intermediate_size
    parts = {
        "lm_head": cfg.vocab_size * h * itemsize,
        "embedding": batch * h * itemsize,
        "attention": layers * attention * itemsize,
        # every layer's router, the EDA scales of all layers but the first, fp32 balancing biases
        "router": (layers * router + (layers - 1) * r) * itemsize + layers * cfg.num_router_classes * 4,
        "norms": (layers * norms + 3 * h) * itemsize,
        "experts": round(layers * expected_distinct_experts(e, batch) * expert * itemsize),
        "kv_cache": batch * context * layers * 2 * nkv * d * itemsize,
        "state": batch * layers * (channels * cfg.conv_state_len + nkv * d) * itemsize,
    }
    parts["total"] = sum(parts.values())
    return parts


def prefill_floor(cfg: ZayaConfig, batch: int, tokens: int, itemsize: int, read_gbs: float,
                  gflops: float) -> dict:
    """Lower bound on TTFT (seconds) of ``batch`` prompts of ``tokens``: the weights read once (the experts
    that ``batch * tokens`` uniformly routed tokens reach, the lm_head once for the last tokens) at the read
    bandwidth, or the matmul FLOPs at ``gflops``, whichever is larger (perfect overlap of the two)."""
    h, d, layers = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    nq, nkv, r = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.router_hidden_size
    channels = (nq + nkv) * d
    per_token = layers * (h * (nq + 2 * nkv) * d + nq * d * h + channels * d * cfg.cca_time1  # projections, conv
                          + h * r + 2 * r * r + r * cfg.num_router_classes  # router
                          + 3 * h * cfg.moe_intermediate_size)  # one expert
    attention_core = layers * 2 * nq * d * tokens * (tokens + 1) // 2  # causal scores and weighted values
    flops = 2 * (batch * tokens * per_token + batch * attention_core + batch * cfg.vocab_size * h)
    weights = decode_bytes(cfg, batch * tokens, 0, itemsize)
    read = weights["total"] - weights["embedding"] - weights["state"]
    return {"bytes": read, "flops": flops, "seconds": max(read / (read_gbs * 1e9), flops / (gflops * 1e9))}


class PeakRSS:
    """Peak resident set size above the level at entry (bytes). Linux: resets the kernel's high-water mark
    (/proc/self/clear_refs) and reads VmHWM; elsewhere ru_maxrss (a lifetime peak, so only an upper bound)."""

    def __enter__(self):
        self.resettable = False
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        self.start = rss_bytes()
        self.peak = 0
        return self

    def __exit__(self, *exc):
        if self.resettable:
            high = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
        else:
            high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.peak = max(high - self.start, 0)
        return False


def rss_bytes() -> int:
    with contextlib.suppress(OSError, AttributeError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
