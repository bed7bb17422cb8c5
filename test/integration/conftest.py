"""trn2 integration suite: runs only where the Neuron SDK is installed (skipped with the reason elsewhere).

Environment (see docs/trainium.md):
  ZAYA1_CHECKPOINT     real ZAYA1 checkpoint directory (either layout, with its tokenizer); tests that need
                       real weights skip without it
  ZAYA1_TP             tensor parallel degree (default 4: trn2.3xlarge at NEURON_LOGICAL_NC_CONFIG=2)
  ZAYA1_COMPILED_DIR   where compiled artifacts are kept between runs (default: a pytest temp dir)
  ZAYA1_PERF_JSON      where the performance test writes TTFT and tokens/s (default: neuron-perf.json)
"""
import os
from pathlib import Path

import pytest

from zaya1.neuron import missing_sdk_packages, sdk_available

DATA = Path(__file__).parent.parent / "data"


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


@pytest.fixture(scope="session")
def compiled_root(tmp_path_factory) -> Path:
    root = os.environ.get("ZAYA1_COMPILED_DIR")
    return Path(root) if root else tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    path = os.environ.get("ZAYA1_CHECKPOINT")
    if not path:
        pytest.skip("set ZAYA1_CHECKPOINT to a ZAYA1 checkpoint directory (with tokenizer) for real-weight tests")
    return Path(path)


def compile_once(model_path: Path, out: Path, **settings) -> Path:
    """Compile with scripts/compile.py unless complete artifacts for these settings already exist."""
    import subprocess
    import sys

    from zaya1.artifacts import is_complete

    if not is_complete(out):
        cmd = [sys.executable, str(Path(__file__).parents[2] / "scripts" / "compile.py"),
               "--model-path", str(model_path), "--compiled-model-path", str(out)]
        for key, value in settings.items():
            flag = "--" + key.replace("_", "-")
            cmd += [flag] if value is True else [flag, str(value)]
        subprocess.run(cmd, check=True)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return DATA / "golden" / "zaya1-original-gqa"


@pytest.fixture(scope="session")
def compiled_tiny(tiny_checkpoint, compiled_root, tp_degree) -> Path:
    """The golden GQA model (4 query heads) in float32, so its tokens and logits are Zyphra's golden ones."""
    tp = min(tp_degree, 4)
    return compile_once(tiny_checkpoint, compiled_root / f"tiny-tp{tp}", tp_degree=tp, batch_size=2,
                        max_context_length=16, seq_len=32, dtype="float32")


@pytest.fixture(scope="session")
def compiled_real(real_checkpoint, compiled_root, tp_degree) -> Path:
    return compile_once(real_checkpoint, compiled_root / f"real-tp{tp_degree}", tp_degree=tp_degree, batch_size=4,
                        max_context_length=128, seq_len=256, buckets="32,128", dtype="bfloat16")


@pytest.fixture(scope="session")
def neuron_real(compiled_real, real_checkpoint):
    from zaya1.neuron import NeuronZayaForCausalLM

    return NeuronZayaForCausalLM.from_compiled(str(compiled_real), model_path=str(real_checkpoint))


@pytest.fixture(scope="session")
def tokenizer(real_checkpoint):
    from zaya1.generation import Tokenizer

    return Tokenizer.from_pretrained(real_checkpoint)
