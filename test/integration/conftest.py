"""trn2 integration suite: runs only where the Neuron SDK is installed (skipped with the reason elsewhere).

Environment (see docs/trainium.md):
  ZAYA1_TP             tensor parallel degree (default 4: trn2.3xlarge at NEURON_LOGICAL_NC_CONFIG=2)
  ZAYA1_COMPILED_DIR   where compiled artifacts are kept between runs, one directory per model, settings,
                       checkpoint fingerprint and SDK version (default: a pytest temp dir, compiled anew)
  ZAYA1_CHECKPOINT     a real ZAYA1 checkpoint directory (either layout, with its tokenizer); the real-weight
                       tests skip without it
  ZAYA1_PERF_JSON      where the performance test writes its records (default: neuron-perf.json)
"""
import functools
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trn2_helpers import ROOT, artifacts_key, compile_argv
from zaya1 import ZayaForCausalLM
from zaya1.neuron.artifacts import is_complete
from zaya1.neuron import missing_sdk_packages, sdk_available


def pytest_collection_modifyitems(config, items):
    if sdk_available():
        return
    skip = pytest.mark.skip(reason=f"Neuron SDK not installed ({', '.join(missing_sdk_packages())} missing): "
                                   f"the integration suite runs on a trn2 instance (docs/trainium.md)")
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


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
            argv = compile_argv(checkpoint, out, self.tp, settings)
            rc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), *argv]).returncode
            if rc != 0:
                pytest.fail(f"zaya1 compile {' '.join(argv)} exited with {rc} (its output is above)")
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
def perf_records():
    """Records of the performance tests, written to ZAYA1_PERF_JSON when the session ends."""
    records = []
    yield records
    if records:
        Path(os.environ.get("ZAYA1_PERF_JSON", "neuron-perf.json")).write_text(json.dumps(records, indent=1))


@pytest.fixture
def release():
    """Models a test appends here are dropped (device memory freed) when it ends."""
    models = []
    yield models
    models.clear()
    gc.collect()
