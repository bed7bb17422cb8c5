"""Choices among equivalent implementations made by timing them on the machine that runs them, cached on
disk per CPU model and torch version.

zaya1 picks its bf16 CPU matrix products (kernels.py) this way instead of guessing from CPU features: the
fastest product of one CPU is the slowest of another (Sapphire Rapids with AMX vs Zen 4, docs/performance.md).
A choice is keyed by what its speed depends on (operation, dtype, weight shape, row-count bucket, torch
threads), measured once at first use and stored in

    $ZAYA1_KERNEL_CACHE (a file path), else $XDG_CACHE_HOME/zaya1/kernels-<cpu>-torch<version>.json
    (XDG_CACHE_HOME defaults to ~/.cache)

under the machine's identity (CPU model, family, model, stepping, a hash of its flags and of the ISA caps
``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``, torch version), so one file never serves another CPU or
torch. Delete it to measure again (a run measured while other processes loaded the machine may have chosen
differently). A file that does not parse is ignored with a one-line warning and rewritten; every write is a
temporary file renamed over the cache (atomic), merged with what other processes wrote meanwhile.

Measurement (``Tuner.choose``): each candidate's output is first checked against the baseline's
(``accurate``; a candidate that fails is never timed; this first call is also its warm-up). Then rounds,
each running every remaining candidate once in rotated order and keeping its best time (other processes
only ever slow a call down, and a short call often runs between two of their time slices); after the
second and later rounds, candidates more than ``DROP`` times slower than the best stop being timed; the
rounds stop after ``MAX_ROUNDS``, or after ``MIN_ROUNDS`` once ``BUDGET_S`` has passed. The fastest is
chosen if it beats the baseline by ``MARGIN``, else the baseline: a measured choice is never slower than
the baseline by more than the timing noise. An entry keeps the best times (ms per call) and the 1-minute
load average per CPU it was measured under; a process that starts when the load is less than half of that
(and the entry's above ``STALE_LOAD``) measures it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import threading
import time
from pathlib import Path
from typing import Callable

import torch

MIN_ROUNDS, MAX_ROUNDS, BUDGET_S, DROP, MARGIN = 5, 40, 0.5, 2.0, 0.1
STALE_LOAD = 0.5  # entries measured above this load per CPU are measured again once the load has halved
CACHE_ENV = "ZAYA1_KERNEL_CACHE"
FORMAT = 1
log = logging.getLogger("zaya1")


def load_average() -> float | None:
    """The 1-minute load average per CPU (1: every CPU busy), None where the OS has none."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return None


def cpu_info(text: str | None = None) -> dict:
    """The first processor's /proc/cpuinfo fields (model name, cpu family, model, stepping, flags); empty
    where it cannot be read."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def machine_identity(cpuinfo: str | None = None, env: dict | None = None) -> str:
    """What a measured choice depends on besides its key, as a file-name-safe string: the CPU (model name,
    family / model / stepping, hash of the flags and ISA caps) and the torch version."""
    env = os.environ if env is None else env
    info = cpu_info(cpuinfo)
    name = info.get("model name") or platform.processor() or platform.machine()
    caps = [f"{k}={env[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if env.get(k)]
    digest = hashlib.sha1(" ".join([info.get("flags", "")] + caps).encode()).hexdigest()[:8]
    family = "f{}m{}s{}".format(*(info.get(k, "x") for k in ("cpu family", "model", "stepping")))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{family}-{digest}-torch{re.sub(r'[^A-Za-z0-9.]+', '-', torch.__version__)}"


def default_path(identity: str | None = None, env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    root = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "zaya1" / f"kernels-{identity or machine_identity()}.json"


class Tuner:
    """Measured choices of one machine (``identity``), cached in ``path``. ``timer``: seconds, monotonic
    (tests inject a fake clock)."""

    def __init__(self, path: Path | None = None, identity: str | None = None,
                 timer: Callable[[], float] = time.perf_counter):
        self.identity = identity or machine_identity()
        self.path = Path(path) if path is not None else default_path(self.identity)
        self.timer = timer
        self.lock = threading.RLock()  # simulated tensor parallelism runs ranks in threads
        self.entries: dict | None = None  # key -> {"choice": name, "ms": {name: best ms}}, read at first use
        self.writable = True

    def _read(self) -> dict:
        """The whole cache file ({} when absent; {} and a warning when it does not parse)."""
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
                raise ValueError(f"not a format-{FORMAT} zaya1 kernel cache")
            return data
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            log.warning(f"zaya1: ignoring the kernel cache {self.path} ({type(e).__name__}: {e}); its choices are "
                        f"measured again and the file rewritten")
            return {}

    def _mine(self, data: dict) -> dict:
        entries = data.get("machines", {}).get(self.identity, {})
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("choice"), str)}

    def _current(self, entries: dict) -> dict:
        """The entries not measured under a much higher load than now (those are measured again: on a busy
        machine a short product often waits for a time slice, which can reverse a ranking)."""
        now = load_average()
        return {k: v for k, v in entries.items()
                if now is None or not isinstance(v.get("load"), (int, float)) or v["load"] <= max(STALE_LOAD, 2 * now)}

    def get(self, key: str) -> str | None:
        """The cached choice for ``key``, or None when it has not been measured."""
        if self.entries is None:
            with self.lock:
                if self.entries is None:
                    self.entries = self._current(self._mine(self._read()))
        entry = self.entries.get(key)  # no lock: a read of a dict that only ever gains entries
        return entry["choice"] if entry else None

    def choose(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], baseline: str,
               accurate: Callable[[torch.Tensor, torch.Tensor], bool]) -> str:
        """The cached choice for ``key``, or measure ``candidates`` (name -> a call to time; ``baseline`` among
        them), store and return the fastest accurate one."""
        with self.lock:
            known = self.get(key)
            if known in candidates:
                return known
            times = self.measure(candidates, baseline, accurate)
            best = min(times, key=times.get)
            choice = best if times[best] < (1 - MARGIN) * times[baseline] else baseline
            load = load_average()
            self.entries[key] = {"choice": choice, "ms": {k: round(v * 1e3, 4) for k, v in times.items()},
                                 "load": None if load is None else round(load, 2)}
            self._write()
            return choice

    def measure(self, candidates: dict, baseline: str, accurate) -> dict[str, float]:
        """name -> best seconds of the candidates that pass ``accurate`` against the baseline."""
        reference = candidates[baseline]()
        alive = [baseline] + [n for n, fn in candidates.items() if n != baseline and accurate(fn(), reference)]
        best = dict.fromkeys(alive, float("inf"))
        start = self.timer()
        for round_ in range(MAX_ROUNDS):
            for i in range(len(alive)):
                name = alive[(i + round_) % len(alive)]
                begin = self.timer()
                candidates[name]()
                best[name] = min(best[name], self.timer() - begin)
            if round_:  # two samples each first: one-time costs (a compiled product's guards) land in one
                fastest = min(best[n] for n in alive)
                alive = [n for n in alive if n == baseline or best[n] <= DROP * fastest]
            if round_ + 1 >= MIN_ROUNDS and self.timer() - start > BUDGET_S:
                break
        return best

    def _write(self) -> None:
        """Merge this process's entries into the file, atomically (a temporary file renamed over it)."""
        if not self.writable:
            return
        data = self._read()
        merged = {**self._mine(data), **self.entries}
        data = {"format": FORMAT, "machines": {**data.get("machines", {}), self.identity: merged}}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.writable = False
            log.warning(f"zaya1: cannot write the kernel cache {self.path} ({e}); choices are kept in memory only")
