"""trn2 integration suite: runs only where the Neuron SDK is installed (skipped with the reason elsewhere).

Off-Neuron without the SDK every test skips; on a Neuron host (/dev/neuron*) a missing or broken SDK (an
import that fails, e.g. NxDI on transformers 5.x) fails every test instead. Environment (see docs/trainium.md):
  ZAYA1_TP             tensor parallel degree (default 4: trn2.3xlarge at NEURON_LOGICAL_NC_CONFIG=2)
  ZAYA1_COMPILED_DIR   where compiled artifacts are kept between runs, one directory per model, settings,
                       checkpoint fingerprint and SDK version (default: a pytest temp dir, compiled anew)
  ZAYA1_CHECKPOINT     a real ZAYA1 checkpoint directory (either layout, with its tokenizer); the real-weight
                       tests skip without it
  ZAYA1_PERF_JSON      where the performance test writes its records (default: neuron-perf.json)
  ZAYA1_NEURON_HOST    1 / 0: treat this machine as a Neuron host or not (default: whether /dev/neuron* exist)
"""
import functools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from trn2_helpers import artifacts_key, compile_command, neuron_devices, sdk_problem, suite_gate
from zaya1 import ZayaForCausalLM
from zaya1.neuron.artifacts import is_complete

GATE = suite_gate(neuron_devices(), sdk_problem(), os.environ)


def pytest_collection_modifyitems(config, items):
    """Off-Neuron without the SDK every test skips with the reason."""
    action, reason = GATE
    if action == "skip":
        for item in items:
            if item.path.is_relative_to(Path(__file__).parent):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def neuron_install():
    """On a Neuron host a missing or broken SDK fails every test with the reason, before anything compiles."""
    if GATE[0] == "fail":
        pytest.fail(GATE[1], pytrace=False)


@pytest.fixture(scope="session")
def tp_degree() -> int:
    return int(os.environ.get("ZAYA1_TP", "4"))


class Trn2:
    """Compiles through zaya1's own compile path (scripts/compile.py = ``zaya1 compile``: manifest, atomic
    output) unless finished artifacts for the same key exist, and loads them with ``from_compiled``.

    The compile runs in a child process: neuronx-cc's memory and the tracing state stay out of the test
    process, and a compiler crash fails the tests of that model only."""

    def __init__(self, root: Path, tp: int):
        self.root, self.tp, self.loaded = root, tp, {}

    def compiled(self, checkpoint: Path, **settings) -> Path:
        out = self.root / artifacts_key(checkpoint, self.tp, settings)
        if not is_complete(out):
            argv = compile_command(checkpoint, out, self.tp, settings)
            rc = subprocess.run(argv).returncode
            if rc != 0:
                pytest.fail(f"{' '.join(argv)} exited with {rc} (its output is above)")
        return out

    def load(self, checkpoint: Path, **settings):
        """The compiled model, loaded once per session."""
        from zaya1.neuron import NeuronZayaForCausalLM

        out = self.compiled(checkpoint, **settings)
        if out not in self.loaded:
            self.loaded[out] = NeuronZayaForCausalLM.from_compiled(str(out), model_path=str(checkpoint))
        return self.loaded[out]


@pytest.fixture(scope="session")
def trn2(tmp_path_factory, tp_degree) -> Trn2:
    root = os.environ.get("ZAYA1_COMPILED_DIR")
    return Trn2(Path(root) if root else tmp_path_factory.mktemp("compiled"), tp_degree)


@pytest.fixture(scope="session")
def cpu_model():
    """The CPU reference, zaya1.ZayaForCausalLM (tested against upstream transformers and the goldens),
    loaded once per (checkpoint, dtype)."""
    return functools.cache(lambda path, dtype=torch.float32: ZayaForCausalLM.from_pretrained(path, dtype=dtype))


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    path = os.environ.get("ZAYA1_CHECKPOINT")
    if not path:
        pytest.skip("set ZAYA1_CHECKPOINT to a ZAYA1 checkpoint directory (with tokenizer) for real-weight tests")
    return Path(path)


@pytest.fixture(scope="session")
def tokenizer(real_checkpoint):
    from zaya1.generation import Tokenizer

    return Tokenizer.from_pretrained(real_checkpoint)


@pytest.fixture(scope="session")
def perf_report():
    """The performance tests' records and their comparison with the published figures, written to
    ZAYA1_PERF_JSON when the session ends: {"records": [...], "versus_published": [...]}."""
    report = {"records": [], "versus_published": []}
    yield report
    if report["records"]:
        Path(os.environ.get("ZAYA1_PERF_JSON", "neuron-perf.json")).write_text(json.dumps(report, indent=1))
