"""``zaya1 bench``: zaya1 against upstream ``transformers.ZayaForCausalLM`` on the same weights, in one run.

Both implementations load the same checkpoint directory (``--model DIR``, or ``--synthetic``: a ZAYA1 with the
real widths, ``--layers`` hybrid layers and random weights, written once as an HF-layout checkpoint) in the
same dtype and generate from the same random prompts. Measurements alternate between the implementations,
so both see the same machine state (this matters on shared machines), and every figure is the median of
``--repeats`` timed runs after a warm-up run.

Figures: TTFT (prefill + first token) per prompt length, decode tokens/s at each batch size, peak RSS above
the pre-run level (device memory on cuda), KV/state bytes per cached token and per sequence, and the
fraction of the decode roofline: the weight bytes one decode step must read (``decode_bytes``) divided by
the memory bandwidth measured at start-up (``measure_bandwidth``).

Output: a table on stdout and, with ``--json FILE``, a list of records
``{metric, batch, prompt_len, zaya1, hf, ratio, unit, backend}`` with ratio = zaya1 / hf.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import kernels
from .checkpoint import DTYPES
from .config import ZayaConfig
from .errors import InputError

SYNTHETIC_VERSION = 2  # bump when write_synthetic_checkpoint changes the weights


# ---------------------------------------------------------------------------------------------- synthetic model
def synthetic_hf_config(layers: int) -> dict:
    """transformers' ZAYA1 config.json with the real widths and ``layers`` hybrid layers."""
    return {
        "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "vocab_size": 262272, "hidden_size": 2048,
        "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
        "hidden_act": "silu", "moe_intermediate_size": 2048, "num_experts": 16, "num_experts_per_tok": 1,
        "router_hidden_size": 256, "cca_time0": 2, "cca_time1": 2, "rms_norm_eps": 1e-5,
        "layer_types": ["hybrid"] * layers,
        "rope_parameters": {
            "hybrid": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.5},
            "hybrid_sliding": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}},
        "sliding_window": None, "max_position_embeddings": 131072, "tie_word_embeddings": True,
        "attention_bias": False, "lm_head_bias": False, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 106,
        "initializer_range": 0.02, "dtype": "bfloat16",
    }


def write_synthetic_checkpoint(path: str | Path, layers: int = 2, seed: int = 0) -> Path:
    """Write a random ZAYA1 (real widths, bf16, HF layout: one safetensors shard per layer plus an index).

    Scales: linear weights ~ N(0, 1/fan_in), norms and residual scales ~ U(0.9, 1.1), small biases, tied
    embedding ~ N(0, 0.05^2) (logits of a few units) with an input scale of ~20 (a residual stream of RMS ~1,
    so that tokens differ more than the attention output they share). The router MLP's fc2 and out_proj rows
    have zero mean, which removes the offset GELU's positive mean would give every token alike: top-1
    choices then spread over the 16 experts (all or nearly all used by a 128-token prompt, the busiest with
    ~15% of the tokens) with route weights well below 1, as a trained, balanced router's do. Balancing biases
    are 0 for the experts and -1 for the skip class (transformers' initial values), so the skip class is
    never chosen. ``seed`` fixes every value."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_hf_config(layers)
    hidden, vocab, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["moe_intermediate_size"]
    experts, router, q_width = cfg["num_experts"], cfg["router_hidden_size"], cfg["num_attention_heads"] * cfg["head_dim"]
    kv_width = cfg["num_key_value_heads"] * cfg["head_dim"]
    channels = q_width + kv_width
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape, std: float) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.bfloat16)
        flat = out.view(-1)
        for start in range(0, flat.numel(), 1 << 24):  # fp32 temporaries of at most 64 MB
            n = min(1 << 24, flat.numel() - start)
            flat[start:start + n] = torch.randn(n, generator=gen) * std
        return out

    def near_one(*shape) -> torch.Tensor:
        return (0.9 + 0.2 * torch.rand(shape, generator=gen)).to(torch.bfloat16)

    def centred(rows: int, cols: int, std: float) -> torch.Tensor:
        w = torch.randn(rows, cols, generator=gen) * std
        return (w - w.mean(dim=1, keepdim=True)).to(torch.bfloat16)

    weight_map: dict[str, str] = {}

    def save(tensors: dict, name: str) -> None:
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    save({"model.embed_tokens.weight": normal(vocab, hidden, std=0.05),
          "model.input_hidden_states_scale": near_one(hidden) * 20,
          "model.input_hidden_states_bias": normal(hidden, std=0.01),
          "model.norm.weight": near_one(hidden)}, "model-embed.safetensors")
    for i in range(layers):
        p = f"model.layers.{i}."
        qkv, gate = p + "self_attn.qkv_proj.", p + "mlp.gate."
        t = {p + "input_layernorm.weight": near_one(hidden),
             p + "post_attention_layernorm.weight": near_one(hidden),
             qkv + "q_proj.weight": normal(q_width, hidden, std=hidden ** -0.5),
             qkv + "k_proj.weight": normal(kv_width, hidden, std=hidden ** -0.5),
             qkv + "v_proj_current.weight": normal(kv_width // 2, hidden, std=hidden ** -0.5),
             qkv + "v_proj_delayed.weight": normal(kv_width // 2, hidden, std=hidden ** -0.5),
             qkv + "conv_qk_depthwise.weight": normal(channels, 1, 2, std=0.5),
             qkv + "conv_qk_depthwise.bias": normal(channels, std=0.02),
             qkv + "conv_qk_grouped.weight": normal(channels, cfg["head_dim"], 2, std=(2 * cfg["head_dim"]) ** -0.5),
             qkv + "conv_qk_grouped.bias": normal(channels, std=0.02),
             p + "self_attn.qk_norm.temp": near_one(cfg["num_key_value_heads"]),
             p + "self_attn.o_proj.weight": normal(hidden, q_width, std=q_width ** -0.5),
             gate + "down_proj.weight": normal(router, hidden, std=hidden ** -0.5),
             gate + "down_proj.bias": normal(router, std=0.02),
             gate + "router_mlp.norm.weight": near_one(router),
             gate + "router_mlp.fc1.weight": normal(router, router, std=2 * router ** -0.5),
             gate + "router_mlp.fc1.bias": normal(router, std=0.02),
             gate + "router_mlp.fc2.weight": centred(router, router, std=2 * router ** -0.5),
             gate + "router_mlp.fc2.bias": normal(router, std=0.02),
             gate + "router_mlp.out_proj.weight": centred(experts + 1, router, std=2 * router ** -0.5),
             gate + "balancing_biases": torch.cat([torch.zeros(experts), torch.tensor([-1.0])]),
             p + "mlp.experts.gate_up_proj": normal(experts, 2 * inter, hidden, std=hidden ** -0.5),
             p + "mlp.experts.down_proj": normal(experts, hidden, inter, std=inter ** -0.5)}
        if i > 0:
            t[gate + "router_states_scale"] = near_one(router) * 0.5
        for merge in ("post_attention_residual_scale", "post_mlp_residual_scale"):
            t[p + merge + ".hidden_states_scale"] = near_one(hidden)
            t[p + merge + ".hidden_states_bias"] = normal(hidden, std=0.02)
            t[p + merge + ".residual_scale"] = near_one(hidden)
            t[p + merge + ".residual_bias"] = normal(hidden, std=0.02)
        save(t, f"model-layer-{i:03d}.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    (path / "synthetic.json").write_text(json.dumps({"layers": layers, "seed": seed, "version": SYNTHETIC_VERSION}))
    return path


def synthetic_checkpoint(cache_dir: str | None, layers: int, seed: int) -> tuple[Path, object]:
    """(checkpoint dir, TemporaryDirectory to keep alive or None). A ``cache_dir`` holding the same synthetic
    model is reused; otherwise the model is written there (or into a temporary directory)."""
    marker = {"layers": layers, "seed": seed, "version": SYNTHETIC_VERSION}
    if cache_dir:
        path = Path(cache_dir)
        if (path / "synthetic.json").is_file() and json.loads((path / "synthetic.json").read_text()) == marker:
            return path, None
        return write_synthetic_checkpoint(path, layers, seed), None
    tmp = tempfile.TemporaryDirectory(prefix="zaya1-bench-")
    return write_synthetic_checkpoint(tmp.name, layers, seed), tmp


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"model name\s*:\s*(.+)", text):
            cpu = m.group(1).strip()
        if m := re.search(r"flags\s*:\s*(.+)", text):
            flags = m.group(1)
    ram = None
    with contextlib.suppress(OSError, AttributeError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "ram_gib": round(ram / 2 ** 30, 1) if ram else None, "isa": isa, "torch": torch.__version__,
            "python": platform.python_version()}


def measure_bandwidth(nbytes: int = 1 << 30, repeats: int = 5, device: str = "cpu") -> dict:
    """Memory bandwidth of a ``nbytes`` tensor, after one untimed pass that faults the pages in.
    ``copy_gbs``: copy into a preallocated tensor, bytes read plus bytes written (STREAM's convention),
    median of ``repeats``. ``read_gbs``: a read-only pass (sum), the best of ``repeats``: the ceiling for
    streaming weights, so the best observed pass (other processes only ever lower it)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn) -> list[float]:
        fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return times

    copy = statistics.median(timed(lambda: dst.copy_(src)))
    read = min(timed(lambda: src.sum()))
    return {"copy_gbs": 2 * nbytes / copy / 1e9, "read_gbs": nbytes / read / 1e9}


def measure_matmul_peak(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """fp32 GEMM throughput (GFLOP/s) of a size^3 product, median of ``repeats``: the compute ceiling used for
    the prefill floor (on CPUs without native bf16, fp32 sgemm is the fastest matmul there is)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def load_average() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


# ---------------------------------------------------------------------------------------------- roofline
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


# ---------------------------------------------------------------------------------------------- memory
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


# ---------------------------------------------------------------------------------------------- runners
class StepClock:
    """Streamer for both generate()s: a timestamp per new token. transformers first puts the prompt."""

    def __init__(self, skip_first: bool, sync):
        self.skip_first, self.sync, self.times = skip_first, sync, []

    def __call__(self, tokens) -> None:
        self.put(tokens)

    def put(self, tokens) -> None:
        if self.skip_first:
            self.skip_first = False
            return
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@dataclass
class Run:
    ttft: float  # seconds from the call to the first token
    decode: float | None  # seconds per decode step (None with a single new token)
    peak_rss: int  # bytes above the level before the call
    peak_device: int | None = None
    tokens: torch.Tensor | None = None


class Runner:
    """One implementation on one device: ``generate_timed(prompts [B, S], new_tokens) -> Run``."""

    name = "?"
    model = None

    def __init__(self, device: str):
        self.device = device
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def _generate(self, ids: torch.Tensor, new_tokens: int, clock: StepClock) -> torch.Tensor:
        raise NotImplementedError

    def generate_timed(self, ids: torch.Tensor, new_tokens: int) -> Run:
        ids = ids.to(self.device)
        clock = StepClock(skip_first=isinstance(self, HFRunner), sync=self.sync)
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        self.sync()
        with PeakRSS() as rss:
            start = time.perf_counter()
            out = self._generate(ids, new_tokens, clock)
        times = clock.times
        decode = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        device_peak = torch.cuda.max_memory_allocated() - base if cuda else None
        return Run(times[0] - start, decode, rss.peak, device_peak, out[:, ids.shape[1]:].cpu())

    def state_bytes(self) -> tuple[int | None, int | None]:
        """(bytes per cached token, bytes per sequence) of the decode state."""
        raise NotImplementedError


class ZayaRunner(Runner):
    """zaya1's own generate(); ``compiled`` selects the torch.compile'd decode step of the same model."""

    def __init__(self, model, device: str, compiled: bool = False):
        super().__init__(device)
        self.model, self.compiled = model, compiled
        self.name = "zaya1+compile" if compiled else "zaya1"

    def _generate(self, ids, new_tokens, clock):
        self.model.compile_decode(self.compiled)
        return self.model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], streamer=clock)

    def state_bytes(self):
        state = self.model.new_state(1, 64)
        return state.nbytes_per_token(), state.nbytes_per_sequence()


class HFRunner(Runner):
    name = "hf"

    def __init__(self, path: Path, dtype: torch.dtype, device: str, attn: str, experts: str | None):
        super().__init__(device)
        try:
            import transformers
        except ImportError:
            transformers = None
        if not hasattr(transformers, "ZayaForCausalLM"):
            found = f"transformers {transformers.__version__}" if transformers else "no transformers"
            raise InputError(f"the comparison with upstream ZayaForCausalLM needs transformers >= 5.23 ({found} "
                             f"installed): pip install 'transformers>=5.23', or pass --no-hf.")
        kwargs = {"dtype": dtype, "attn_implementation": attn}
        if experts:
            kwargs["experts_implementation"] = experts
        self.model = transformers.ZayaForCausalLM.from_pretrained(str(path), **kwargs).to(device).eval()
        self.model.generation_config.eos_token_id = None  # never stop early: every run decodes the same count
        self.attn = self.model.config._attn_implementation
        self.experts = getattr(self.model.config, "_experts_implementation", None) or "eager"

    def _generate(self, ids, new_tokens, clock):
        with torch.inference_mode():
            return self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                       do_sample=False, streamer=clock, pad_token_id=0)

    def state_bytes(self):
        ids = torch.randint(3, self.model.config.vocab_size, (1, 8), device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                                      return_dict_in_generate=True, pad_token_id=0)
        cache, tokens = out.past_key_values, ids.shape[1] + 1
        kv = seq = 0
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                kv += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
            for name in ("conv_states", "recurrent_states"):
                seq += sum(t.numel() * t.element_size() for t in getattr(layer, name, {}).values()
                           if isinstance(t, torch.Tensor))
        return kv // tokens, seq


class NeuronRunner(Runner):
    name = "zaya1"

    def __init__(self, compiled: str, model_path: Path | None):
        super().__init__("cpu")
        from .neuron import NeuronZayaForCausalLM

        self.model = NeuronZayaForCausalLM.from_compiled(compiled, model_path=model_path)

    def _generate(self, ids, new_tokens, clock):
        return self.model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], streamer=clock)

    def state_bytes(self):
        return None, None


def neuron_available() -> str | None:
    """None when the Neuron backend can run, else why it is skipped (zaya1.neuron imports without the SDK)."""
    try:
        from . import neuron
    except ImportError:
        return "zaya1.neuron is not part of this installation"
    if not neuron.sdk_available():
        return f"Neuron SDK not installed (missing {', '.join(neuron.missing_sdk_packages())})"
    return None


# ---------------------------------------------------------------------------------------------- records / table
@dataclass
class Table:
    backend: str
    records: list = field(default_factory=list)

    def add(self, metric: str, batch, prompt_len, zaya1, hf, unit: str, higher_is_better: bool | None = None):
        ratio = zaya1 / hf if zaya1 is not None and hf not in (None, 0) else None
        speedup = None
        if ratio is not None and higher_is_better is not None and ratio != 0:
            speedup = ratio if higher_is_better else 1 / ratio
        self.records.append({"metric": metric, "batch": batch, "prompt_len": prompt_len, "zaya1": zaya1, "hf": hf,
                             "ratio": ratio, "unit": unit, "backend": self.backend, "speedup": speedup})

    def render(self) -> str:
        def fmt(v):
            if v is None:
                return "-"
            if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
                return f"{int(v):,}"
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"

        head = ["metric", "batch", "prompt", "zaya1", "hf", "zaya1/hf", "speedup", "unit"]
        rows = [[r["metric"], fmt(r["batch"]), fmt(r["prompt_len"]), fmt(r["zaya1"]), fmt(r["hf"]), fmt(r["ratio"]),
                 (fmt(r["speedup"]) + "x") if r["speedup"] is not None else "-", r["unit"]] for r in self.records]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------- driver
def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint directory (either layout); default: --synthetic")
    src.add_argument("--synthetic", action="store_true",
                     help="random ZAYA1 with the real widths (hidden 2048, 8/2 heads of 128, 16 experts of 2048, "
                          "router 256, vocab 262272), written as an HF-layout checkpoint (the default)")
    p.add_argument("--layers", type=int, default=2, help="hybrid layers of the synthetic model (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and of the prompts")
    p.add_argument("--synthetic-dir", help="keep the synthetic checkpoint here and reuse it on later runs")
    p.add_argument("--backends", default="auto",
                   help="comma-separated cpu,cuda,neuron; auto = cpu, cuda when available, neuron when installed")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="weights/activations of both models")
    p.add_argument("--prompt-lens", default="128", help="comma-separated prompt lengths for TTFT (default 128); "
                                                        "decode runs at the first")
    p.add_argument("--batches", default="1,4,8", help="decode batch sizes (default 1,4,8)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per decode run (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure, median reported (default 3)")
    p.add_argument("--compile", choices=("off", "on", "both"), default="both",
                   help="zaya1 decode step: eager (off), torch.compile'd (on), or both side by side (default)")
    p.add_argument("--exact-kernels", action="store_true",
                   help="zaya1 with F.linear (bit-identical to transformers) instead of the fast bf16 CPU kernels")
    p.add_argument("--no-hf", action="store_true", help="zaya1 only (no transformers comparison)")
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"),
                   help="transformers attention implementation (default sdpa, its default and fastest on CPU)")
    p.add_argument("--hf-experts", default=None,
                   help="transformers experts implementation (default: its own default, grouped_mm)")
    p.add_argument("--neuron-compiled", help="neuron backend: directory written by scripts/compile.py")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--bandwidth-mb", type=int, default=1024, help="size of the bandwidth-test copy (default 1024)")
    p.add_argument("--quick", action="store_true",
                   help="short run: batches 1,4, 8 new tokens, 2 repeats")
    p.add_argument("--json", help="write the records (a JSON list) to this file")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _backends(spec: str) -> tuple[list[str], list[str]]:
    """(backends to run, lines saying what is skipped and why)."""
    wanted = ["cpu", "cuda", "neuron"] if spec == "auto" else [b.strip() for b in spec.split(",") if b.strip()]
    run, skipped = [], []
    for b in wanted:
        if b == "cpu":
            run.append(b)
        elif b == "cuda":
            if torch.cuda.is_available():
                run.append(b)
            elif spec != "auto":
                skipped.append("cuda: skipped: torch.cuda.is_available() is False")
        elif b == "neuron":
            reason = neuron_available()
            (skipped.append(f"neuron: skipped: {reason}") if reason else run.append(b))
        else:
            raise SystemExit(f"zaya1 bench: unknown backend {b!r} (use cpu, cuda, neuron)")
    return run, skipped


def run(args) -> int:
    """The benchmark; zaya1 runs with the fast bf16 CPU kernels unless --exact-kernels (restored after)."""
    previous = kernels.FAST_BF16
    kernels.use_fast_bf16(not args.exact_kernels)
    try:
        return _run(args)
    finally:
        kernels.use_fast_bf16(previous)


def _run(args) -> int:
    if args.quick:
        args.batches, args.new_tokens, args.repeats = ("1,4" if args.batches == "1,4,8" else args.batches,
                                                       min(args.new_tokens, 8), min(args.repeats, 2))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    prompt_lens, batches = _ints(args.prompt_lens), _ints(args.batches)
    backends, skipped = _backends(args.backends)
    for line in skipped:
        print(line)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['threads']} torch threads), {info['ram_gib']} GiB "
          f"RAM, ISA {'/'.join(info['isa']) or '-'}; torch {info['torch']}, python {info['python']}")

    keep = None
    if args.model:
        path = Path(args.model)
    else:
        start = time.perf_counter()
        path, keep = synthetic_checkpoint(args.synthetic_dir, args.layers, args.seed)
        print(f"model: synthetic ZAYA1, real widths, {args.layers} layers, seed {args.seed}, {args.dtype} "
              f"({path}, ready in {time.perf_counter() - start:.1f} s)")
    cfg = ZayaConfig.from_pretrained(path)
    tables = []
    try:
        for backend in backends:
            if backend == "neuron" and not args.neuron_compiled:
                print("neuron: skipped: pass --neuron-compiled DIR (written by scripts/compile.py)")
                continue
            tables.append(_bench_backend(args, backend, path, cfg, dtype, prompt_lens, batches))
    finally:
        if keep is not None:
            keep.cleanup()
    records = [r for t in tables for r in t.records]
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
        print(f"wrote {len(records)} records to {args.json}")
    return 0


def _bench_backend(args, backend, path, cfg, dtype, prompt_lens, batches) -> Table:
    from tqdm.auto import tqdm

    device = "cuda" if backend == "cuda" else "cpu"
    table = Table(backend)
    load = load_average()
    if load is not None:
        busy = " (other processes are using the CPU: expect noisy timings)" if load > 0.5 else ""
        print(f"\n[{backend}] 1-minute load average before the run: {load:.2f}{busy}")
    bw = measure_bandwidth(args.bandwidth_mb << 20, device=device)
    bw["gflops"] = measure_matmul_peak(device=device)
    print(f"[{backend}] memory bandwidth ({args.bandwidth_mb} MB tensor): copy {bw['copy_gbs']:.1f} GB/s (read + write, "
          f"median of 5), read {bw['read_gbs']:.1f} GB/s (best of 5); fp32 GEMM (2048^3) {bw['gflops']:.0f} GFLOP/s")

    runners: dict[str, Runner] = {}
    if backend == "neuron":
        runners["zaya1"] = NeuronRunner(args.neuron_compiled, path)
    else:
        from .model import ZayaForCausalLM

        model = ZayaForCausalLM.from_pretrained(path, dtype=dtype, device=device)
        for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
            runner = ZayaRunner(model, device, compiled)
            runners[runner.name] = runner
        print(f"[{backend}] routing of a {prompt_lens[0]}-token prompt (zaya1's router): "
              + "; ".join(routing_summary(model, prompt_lens[0], cfg.vocab_size, args.seed)))
    hf = None
    if not args.no_hf and backend != "neuron":
        hf = HFRunner(path, dtype, device, args.hf_attn, args.hf_experts)
        print(f"[{backend}] transformers {__import__('transformers').__version__}: ZayaForCausalLM, "
              f"attn_implementation={hf.attn}, experts_implementation={hf.experts}, {args.dtype}, its own "
              f"generate() and DynamicCache")
    impls = list(runners.items()) + ([("hf", hf)] if hf else [])

    gen = torch.Generator().manual_seed(args.seed + 1)
    jobs = [(1, p) for p in prompt_lens] + [(b, prompt_lens[0]) for b in batches if b != 1]
    results: dict = {}
    total = len(jobs) * (args.repeats + 1) * len(impls)
    with tqdm(total=total, desc=f"{backend} bench", unit="run", leave=False) as bar:
        for batch, prompt_len in jobs:
            ids = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen)
            new = args.new_tokens if (batch in batches and prompt_len == prompt_lens[0]) else 2
            for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
                for name, runner in impls:
                    bar.set_postfix_str(f"{name} b={batch} p={prompt_len}")
                    result = runner.generate_timed(ids, new)
                    if rep:
                        results.setdefault((name, batch, prompt_len), []).append(result)
                    bar.update()
    if load is not None:
        print(f"[{backend}] 1-minute load average after the run: {load_average():.2f}")
    return _report(args, backend, table, cfg, dtype, bw, runners, hf, results, prompt_lens, batches)


def routing_summary(model, prompt_len: int, vocab: int, seed: int) -> list[str]:
    """Per layer: how many experts a random prompt's tokens choose, the busiest expert's share, skips."""
    counts = []

    def hook(router, inputs, output):
        counts.append(torch.bincount(output[0].flatten().cpu(), minlength=router.num_experts + 1))

    hooks = [layer.mlp.router.register_forward_hook(hook) for layer in model.model.layers]
    ids = torch.randint(3, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(model.device)
    try:
        with torch.inference_mode():
            model.prefill(ids, torch.tensor([prompt_len], device=model.device), torch.zeros(1, dtype=torch.long,
                          device=model.device), model.new_state(1, prompt_len))
    finally:
        for h in hooks:
            h.remove()
    return [f"layer {i}: {int((c[:-1] > 0).sum())}/{len(c) - 1} experts, busiest {c[:-1].max() / c.sum():.0%}, "
            f"skip {int(c[-1])}" for i, c in enumerate(counts)]


def _param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:  # tied weights once
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _report(args, backend, table, cfg, dtype, bw, runners, hf, results, prompt_lens, batches) -> Table:
    itemsize = torch.empty((), dtype=dtype).element_size()
    mb, p0 = 1 / 2 ** 20, prompt_lens[0]

    def med(names, batch, prompt_len, attr):
        return _median([getattr(r, attr) for n in names for r in results.get((n, batch, prompt_len), [])])

    hf_names = ["hf"] if hf else []
    # prefill is the same eager code in every zaya1 variant: their TTFT samples are pooled
    for batch, prompt_len in [(1, p) for p in prompt_lens] + [(b, p0) for b in batches if b != 1]:
        z, h = med(runners, batch, prompt_len, "ttft"), med(hf_names, batch, prompt_len, "ttft")
        floor = prefill_floor(cfg, batch, prompt_len, itemsize, bw["read_gbs"], bw["gflops"])["seconds"]
        table.add("ttft", batch, prompt_len, z * 1e3, h * 1e3 if h else None, "ms", higher_is_better=False)
        table.add("ttft_roofline", batch, prompt_len, floor / z, floor / h if h else None, "fraction",
                  higher_is_better=True)
    for name in runners:
        tag = "" if name == "zaya1" else f"[{name.split('+', 1)[1]}]"
        for batch in batches:
            z, h = med([name], batch, p0, "decode"), med(hf_names, batch, p0, "decode")
            need = decode_bytes(cfg, batch, p0 + args.new_tokens // 2, itemsize)["total"]  # mean context
            floor = need / (bw["read_gbs"] * 1e9)  # seconds per step at the read bandwidth
            table.add(f"decode{tag}", batch, p0, batch / z if z else None, batch / h if h else None, "tok/s",
                      higher_is_better=True)
            table.add(f"decode_roofline{tag}", batch, p0, floor / z if z else None, floor / h if h else None,
                      "fraction", higher_is_better=True)
    zaya = next(iter(runners.values()))
    z_weights = _param_bytes(zaya.model) if backend != "neuron" else None
    h_weights = _param_bytes(hf.model) if hf else None
    table.add("weights", None, None, z_weights * mb if z_weights else None, h_weights * mb if hf else None, "MiB",
              higher_is_better=False)
    key = "peak_device" if backend == "cuda" else "peak_rss"
    for batch in batches:
        z = max((getattr(r, key) or 0 for n in runners for r in results.get((n, batch, p0), [])), default=0)
        h = max((getattr(r, key) or 0 for r in results.get(("hf", batch, p0), [])), default=0) if hf else None
        name = "device_mem" if backend == "cuda" else "peak_rss"
        if z_weights is not None:
            table.add(name, batch, p0, (z_weights + z) * mb, (h_weights + h) * mb if hf else None, "MiB",
                      higher_is_better=False)
        table.add(f"{name}_working", batch, p0, z * mb, h * mb if hf else None, "MiB", higher_is_better=False)
    z_tok, z_seq = zaya.state_bytes()
    h_tok, h_seq = hf.state_bytes() if hf else (None, None)
    table.add("state_per_token", None, None, z_tok, h_tok, "bytes", higher_is_better=False)
    table.add("state_per_sequence", None, None, z_seq, h_seq, "bytes", higher_is_better=False)
    for batch in batches:
        need = decode_bytes(cfg, batch, p0 + args.new_tokens // 2, itemsize)["total"]
        table.add("decode_bytes_per_step", batch, p0, need * mb, None, "MiB")
    for batch, prompt_len in [(1, p) for p in prompt_lens]:
        floor = prefill_floor(cfg, batch, prompt_len, itemsize, bw["read_gbs"], bw["gflops"])
        table.add("ttft_floor", batch, prompt_len, floor["seconds"] * 1e3, None, "ms")
    table.add("bandwidth_read", None, None, bw["read_gbs"], None, "GB/s")
    table.add("bandwidth_copy", None, None, bw["copy_gbs"], None, "GB/s")
    table.add("fp32_gemm", None, None, bw["gflops"], None, "GFLOP/s")

    print(f"\n[{backend}] {cfg.num_hidden_layers} layers, {args.dtype}; medians of {args.repeats} runs after a "
          f"warm-up; decode = {args.new_tokens} new tokens (tok/s over the steps after the first token); "
          f"ratio = zaya1/hf, speedup > 1 = zaya1 better; [compile] = zaya1 with compile_decode()")
    print(table.render())
    print(f"decode_roofline: bytes one decode step must read (lm_head, attention, router, norms, E(1-(1-1/E)^b) "
          f"distinct experts per layer for uniform top-1 routing, KV cache, state) at the measured read bandwidth "
          f"{bw['read_gbs']:.1f} GB/s, divided by the measured step time.")
    mem, what = ("device_mem", "allocated device memory") if backend == "cuda" else ("peak_rss", "resident set")
    print(f"{mem}: weights + {mem}_working, the peak {what} above its level before a generate call (prefill + "
          f"decode; on CPU it depends on the allocator: memory freed earlier is reused without growing RSS).")
    print(f"ttft_roofline: ttft_floor = max(weights read once at {bw['read_gbs']:.1f} GB/s, matmul FLOPs at "
          f"{bw['gflops']:.0f} GFLOP/s) divided by the measured TTFT.")
    if hf:
        for batch in batches:
            z = results.get((next(iter(runners)), batch, p0), [])
            h = results.get(("hf", batch, p0), [])
            if z and h:
                same = (z[0].tokens == h[0].tokens).all(dim=1).sum().item()
                first = (z[0].tokens[:, 0] == h[0].tokens[:, 0]).sum().item()
                print(f"greedy tokens vs transformers, batch {batch}: first token equal in {first}/{batch} "
                      f"sequences, all {args.new_tokens} equal in {same}/{batch} (bf16 kernels differ in rounding)")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zaya1 bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
