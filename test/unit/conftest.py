"""Shared fixtures: tiny random upstream checkpoints (built once per session) and a report of every measured
parity number, printed at the end of the run."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # zaya_testlib

import zaya1  # noqa: E402
from zaya_testlib import build_hf_checkpoint, hf_config  # noqa: E402

_REPORT: list[tuple[str, float]] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-width model tests (minutes on 2 cores); CI runs them, "
                                       "-m 'not slow' skips them locally")


@pytest.fixture
def inference():
    """Seeded, without autograd: modules opt in with ``pytestmark = pytest.mark.usefixtures("inference")``."""
    torch.manual_seed(0)
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def report():
    """report(label, value): print a measured number and list it in the end-of-run summary."""

    def record(label: str, value: float) -> float:
        value = float(value)
        print(f"parity max|dlogit| {label}: {value:.3g}")
        _REPORT.append((label, value))
        return value

    return record


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("measured max |dlogit| (float32 unless labelled bf16)")
        for label, value in _REPORT:
            terminalreporter.write_line(f"parity max|dlogit| {label}: {value:.3g}")


class TinyModels:
    """name -> random upstream checkpoint on disk, the upstream model (eager, fp32) and ours loaded from it."""

    def __init__(self, root: Path):
        self.root, self.cache = root, {}

    def __call__(self, name: str, seed: int = 0, **config_changes) -> SimpleNamespace:
        key = (name, seed, tuple(sorted(config_changes.items())))
        if key not in self.cache:
            path = self.root / f"{name}-{seed}-{len(self.cache)}"
            hf = build_hf_checkpoint(path, hf_config(name, **config_changes), seed=seed)
            ours = zaya1.ZayaForCausalLM.from_pretrained(path, dtype=torch.float32)
            self.cache[key] = SimpleNamespace(name=name, path=path, hf=hf, ours=ours, config=hf.config)
        return self.cache[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny"))
