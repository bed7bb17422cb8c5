"""Products chosen by measurement (autotune.py, kernels.choose): the fastest accurate candidate wins, never
one slower than F.linear; choices are cached on disk per CPU and torch version; a corrupt cache is ignored
with a one-line warning and rewritten. A fake clock stands in for the timer, so the outcome is known."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from zaya1 import autotune, kernels

pytestmark = pytest.mark.usefixtures("inference")


class FakeClock:
    """A timer that advances only when a candidate runs, by that candidate's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, seconds: float, fn):
        def run(*args):
            self.now += seconds
            return fn(*args)
        return run


def tuner(tmp_path, clock=None, identity="cpu-a-torch1"):
    return autotune.Tuner(tmp_path / "kernels.json", identity=identity, timer=clock or FakeClock())


def exact_tensor():
    return torch.ones(4)


def always(out, reference):
    return True


def test_the_fastest_candidate_is_chosen_and_cached(tmp_path):
    clock = FakeClock()
    t = tuner(tmp_path, clock)
    costs = {"linear": 3e-3, "mv": 1e-3, "swapped": 2e-3}
    candidates = {name: clock.costing(cost, exact_tensor) for name, cost in costs.items()}
    assert t.choose("k", candidates, "linear", always) == "mv"
    entry = json.loads((tmp_path / "kernels.json").read_text())["machines"]["cpu-a-torch1"]["k"]
    assert entry["choice"] == "mv" and entry["ms"] == pytest.approx({"linear": 3, "mv": 1, "swapped": 2})
    # a second process reads the choice back without timing anything
    again = tuner(tmp_path, FakeClock())
    assert again.get("k") == "mv"
    assert again.choose("k", {name: pytest.fail for name in costs}, "linear", always) == "mv"


def test_never_slower_than_the_baseline(tmp_path):
    clock = FakeClock()
    near = {"linear": 1.0e-3, "swapped": 0.95e-3}  # within the margin: timing noise, not a gain
    t = tuner(tmp_path, clock)
    assert t.choose("near", {n: clock.costing(c, exact_tensor) for n, c in near.items()}, "linear", always) == "linear"
    slower = {"linear": 1e-3, "mv": 5e-3}
    assert t.choose("slow", {n: clock.costing(c, exact_tensor) for n, c in slower.items()}, "linear",
                    always) == "linear"


def test_an_inaccurate_candidate_is_never_chosen(tmp_path):
    clock = FakeClock()
    wrong = clock.costing(1e-6, lambda: torch.full((4,), 2.0))
    choice = tuner(tmp_path, clock).choose("k", {"linear": clock.costing(1e-3, exact_tensor), "fast": wrong},
                                           "linear", kernels.accurate)
    assert choice == "linear"


def test_choices_are_kept_per_machine_identity(tmp_path):
    clock = FakeClock()
    tuner(tmp_path, clock, "cpu-a-torch1").choose(
        "k", {"linear": clock.costing(2e-3, exact_tensor), "mv": clock.costing(1e-3, exact_tensor)}, "linear", always)
    other = tuner(tmp_path, clock, "cpu-b-torch1")  # same file, another CPU or torch: measured again
    assert other.get("k") is None
    other.choose("k", {"linear": clock.costing(1e-3, exact_tensor), "mv": clock.costing(2e-3, exact_tensor)},
                 "linear", always)
    assert tuner(tmp_path, clock, "cpu-a-torch1").get("k") == "mv"  # both machines' entries survive
    assert tuner(tmp_path, clock, "cpu-b-torch1").get("k") == "linear"


def test_identity_names_the_cpu_and_torch():
    zen4 = "model name\t: AMD EPYC 9R14\ncpu family\t: 25\nmodel\t\t: 17\nstepping\t: 1\nflags\t\t: avx2 avx512_bf16\n"
    spr = "model name\t: Intel Xeon 8488C\ncpu family\t: 6\nmodel\t\t: 143\nstepping\t: 8\nflags\t\t: amx_bf16\n"
    a = autotune.machine_identity(zen4, env={})
    assert a.startswith("amd-epyc-9r14-f25m17s1-") and a.endswith(f"torch{torch.__version__.replace('+', '-')}")
    assert autotune.machine_identity(spr, env={}) != a
    assert autotune.machine_identity(zen4, env={"ONEDNN_MAX_CPU_ISA": "AVX2"}) != a  # an ISA cap changes speeds
    assert autotune.default_path(a, env={"HOME": "/h"}).name == f"kernels-{a}.json"
    assert autotune.default_path(a, env={autotune.CACHE_ENV: "/x/k.json"}) == autotune.Path("/x/k.json")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": 99, "machines": {}}'])
def test_a_corrupt_cache_is_ignored_with_one_warning_and_rewritten(tmp_path, caplog, content):
    (tmp_path / "kernels.json").write_text(content)
    clock = FakeClock()
    t = tuner(tmp_path, clock)
    with caplog.at_level(logging.WARNING, logger="zaya1"):
        assert t.get("k") is None
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert "kernels.json" in caplog.records[0].getMessage()
    t.choose("k", {"linear": clock.costing(1e-3, exact_tensor)}, "linear", always)
    assert json.loads((tmp_path / "kernels.json").read_text())["machines"]["cpu-a-torch1"]["k"]["choice"] == "linear"
    assert [p.name for p in tmp_path.iterdir()] == ["kernels.json"]  # written atomically: no temporary left


def test_kernels_choose_runs_the_measured_fastest_product(tmp_path, monkeypatch):
    """kernels.choose times the real products (each wrapped to advance the fake clock by a set cost) and
    linear() then runs the fastest: here the swapped GEMM, then, with other costs, F.linear."""
    clock = FakeClock()
    monkeypatch.setattr(kernels, "TUNER", tuner(tmp_path, clock))
    monkeypatch.setattr(kernels, "EXACT", False)
    costs = {"linear": 3e-3, "mv": 9e-3, "swapped": 1e-3, "fp32": 2e-3, "fused": 4e-3}

    def costed(name, product):
        def run(*args):
            clock.now += costs[name]
            return product(*args)
        return run

    monkeypatch.setattr(kernels, "PRODUCTS", {n: costed(n, p) for n, p in kernels.PRODUCTS.items()})
    weight, x = torch.randn(512, 64).bfloat16(), torch.randn(3, 64).bfloat16()
    out = kernels.linear(x, weight)
    entry = kernels.TUNER.entries[kernels._key(512, 64, 4)]
    assert entry["choice"] == "swapped" and set(entry["ms"]) == {"linear", "mv", "swapped", "fp32"}  # no fused:
    assert (out.float() - F.linear(x, weight).float()).abs().max() <= 2 ** -7 * out.float().abs().max()  # small
    calls = clock.now
    kernels.linear(x, weight)
    assert clock.now - calls == pytest.approx(costs["swapped"])  # the cached choice, run once
    costs.update(swapped=5e-3)
    kernels.linear(torch.randn(9, 64).bfloat16(), weight)  # a new row bucket is measured on its own
    assert kernels.TUNER.get(kernels._key(512, 64, 16)) == "fp32"


def test_a_choice_measured_under_much_higher_load_is_measured_again(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(autotune, "load_average", lambda: 3.0)  # per CPU: a busy machine
    tuner(tmp_path, clock).choose("k", {"linear": clock.costing(2e-3, exact_tensor),
                                        "mv": clock.costing(1e-3, exact_tensor)}, "linear", always)
    assert tuner(tmp_path).get("k") == "mv"  # the load has not halved: kept
    monkeypatch.setattr(autotune, "load_average", lambda: 0.2)
    assert tuner(tmp_path).get("k") is None  # quieter now: measured again
