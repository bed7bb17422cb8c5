"""The results: records ``{metric, batch, prompt_len, unit, backend, floor, zaya1, zaya1_of_floor, hf,
hf_of_floor, ratio, speedup}`` and the printed table. Each speed figure is set against this machine's
measured floor first (the time a run at the measured read bandwidth, or GEMM rate, would take: ``floor`` in
the figure's unit, ``*_of_floor`` the fraction of it reached) and against transformers second (``ratio`` =
zaya1 / hf, ``speedup`` > 1 = zaya1 better)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from ... import kernels
from .measure import decode_bytes, prefill_floor


@dataclass
class Table:
    backend: str
    records: list = field(default_factory=list)

    def add(self, metric: str, batch, prompt_len, zaya1, hf, unit: str, higher_is_better: bool | None = None,
            floor: float | None = None, fractions: tuple = (None, None)):
        ratio = zaya1 / hf if zaya1 is not None and hf not in (None, 0) else None
        speedup = None
        if ratio is not None and higher_is_better is not None and ratio != 0:
            speedup = ratio if higher_is_better else 1 / ratio
        self.records.append({"metric": metric, "batch": batch, "prompt_len": prompt_len, "unit": unit,
                             "backend": self.backend, "floor": floor, "zaya1": zaya1, "zaya1_of_floor": fractions[0],
                             "hf": hf, "hf_of_floor": fractions[1], "ratio": ratio, "speedup": speedup})

    def render(self) -> str:
        def fmt(v):
            if v is None:
                return "-"
            if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
                return f"{int(v):,}"
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"

        head = ["metric", "batch", "prompt", "unit", "floor", "zaya1", "of floor", "hf", "of floor", "zaya1 vs hf"]
        rows = [[r["metric"], fmt(r["batch"]), fmt(r["prompt_len"]), r["unit"], fmt(r["floor"]), fmt(r["zaya1"]),
                 fmt(r["zaya1_of_floor"]), fmt(r["hf"]), fmt(r["hf_of_floor"]),
                 (fmt(r["speedup"]) + "x") if r["speedup"] is not None else "-"] for r in self.records]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:  # tied weights once
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def jobs(prompt_lens: list[int], batches: list[int]) -> list[tuple[int, int]]:
    """(batch, prompt length) of every timed generate: each prompt length at batch 1, then the other batches
    at the first length (where decode is measured)."""
    return [(1, p) for p in prompt_lens] + [(b, prompt_lens[0]) for b in batches if b != 1]


def report(args, backend, cfg, dtype, bw, gflops, loads, runners, hf, results, prompt_lens, batches) -> Table:
    """The records of one backend, printed. Floor fractions use the highest read
    bandwidth observed (at start-up or between the runs); a run that still beats its floor means the
    bandwidth was measured under contention: the fraction is then reported as 1 and the run flagged."""
    table = Table(backend)
    itemsize = torch.empty((), dtype=dtype).element_size()
    mb, p0 = 1 / 2 ** 20, prompt_lens[0]
    read_gbs, beaten = bw.read_gbs, []
    floors = {job: prefill_floor(cfg, *job, itemsize, read_gbs, gflops) for job in jobs(prompt_lens, batches)}
    step_bytes = {b: decode_bytes(cfg, b, p0 + args.new_tokens // 2, itemsize)["total"]  # mean context
                  for b in batches}

    def fraction(floor, seconds, what):
        if not seconds:
            return None
        if floor > seconds:
            beaten.append(f"{what} {floor / seconds:.2f}")
        return min(floor / seconds, 1.0)

    def med(names, batch, prompt_len, attr):
        return _median([getattr(r, attr) for n in names for r in results.get((n, batch, prompt_len), [])])

    hf_names = ["hf"] if hf else []
    # prefill is the same eager code in every zaya1 variant: their TTFT samples are pooled
    for batch, prompt_len in floors:
        z, h = med(runners, batch, prompt_len, "ttft"), med(hf_names, batch, prompt_len, "ttft")
        floor = floors[batch, prompt_len]["seconds"]
        table.add("ttft", batch, prompt_len, z * 1e3, h * 1e3 if h else None, "ms", higher_is_better=False,
                  floor=floor * 1e3, fractions=(fraction(floor, z, f"zaya1 ttft b={batch}"),
                                                fraction(floor, h, f"hf ttft b={batch}")))
    for name in runners:
        tag = "" if name == "zaya1" else f"[{name.split('+', 1)[1]}]"
        for batch in batches:
            z, h = med([name], batch, p0, "decode"), med(hf_names, batch, p0, "decode")
            floor = step_bytes[batch] / (read_gbs * 1e9)  # seconds per step at the read bandwidth
            table.add(f"decode{tag}", batch, p0, batch / z if z else None, batch / h if h else None, "tok/s",
                      higher_is_better=True, floor=batch / floor,
                      fractions=(fraction(floor, z, f"{name} decode b={batch}"),
                                 fraction(floor, h, f"hf decode b={batch}")))
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
        table.add("decode_bytes_per_step", batch, p0, step_bytes[batch] * mb, None, "MiB")
    table.add("bandwidth_read", None, None, read_gbs, None, "GB/s")
    table.add("bandwidth_read_spread", None, None, bw.spread(), None, "min/max")
    table.add("bandwidth_copy", None, None, bw.copy_gbs, None, "GB/s")
    table.add("gemm_peak", None, None, gflops, None, "GFLOP/s")
    for when, load in zip(("before", "after"), loads):
        table.add(f"load_average_{when}", None, None, load, None, "1-min")
    contended = bool(beaten) or bw.spread() < 0.8
    table.add("contended", None, None, int(contended), None, "flag")

    print(f"\n[{backend}] {cfg.num_hidden_layers} layers, {args.dtype}; medians of {args.repeats} runs after a "
          f"warm-up; decode = {args.new_tokens} new tokens (tok/s over the steps after the first token); "
          f"[compile] = zaya1 with compile_decode(); {kernels.kernel_mode()}")
    print(table.render())
    print(f"floor: what a run at this machine's measured limits would reach; 'of floor' = the fraction of it reached "
          f"(1 = at the floor), then 'zaya1 vs hf' = the speedup over transformers (> 1: zaya1 faster; at most "
          f"1 / hf's fraction, the gain of a run at the floor). decode floor: the bytes one step must read (lm_head, "
          f"attention, router, norms, E(1-(1-1/E)^b) distinct experts per layer for uniform top-1 routing, KV "
          f"cache, state) at the read bandwidth {read_gbs:.1f} GB/s (the best of {len(bw.samples)} samples, spread "
          f"{bw.spread():.2f}). ttft floor: max(the weights read once at {read_gbs:.1f} GB/s, the matmul FLOPs at "
          f"{gflops:.0f} GFLOP/s).")
    mem, what = ("device_mem", "allocated device memory") if backend == "cuda" else ("peak_rss", "resident set")
    print(f"{mem}: weights + {mem}_working, the peak {what} above its level before a generate call (prefill + "
          f"decode; on CPU it depends on the allocator: memory freed earlier is reused without growing RSS).")
    if contended:
        print("CONTENDED: " + (f"runs beat their floor ({', '.join(beaten)}): the bandwidth was measured while other "
                               f"processes used the memory, so those fractions are reported as 1; " if beaten else "")
              + f"bandwidth samples spread {bw.spread():.2f}, 1-minute load "
              + " -> ".join(f"{x:.2f}" for x in loads if x is not None) + ". Rerun on a quiet machine.")
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
