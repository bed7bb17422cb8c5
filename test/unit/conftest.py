"""Shared fixtures: the session's kernel-choice cache (a temporary file), tiny random upstream checkpoints
(built once per session), one with a tokenizer, chat template and generation_config.json, and a report of
every measured parity number, printed at the end."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # zaya_testlib

import zaya1  # noqa: E402
import transformers  # noqa: E402

from zaya1.tokenizer import Tokenizer  # noqa: E402
from zaya_testlib import build_hf_checkpoint, hf_config, load_hf, prefer_words_, save_tokenizer  # noqa: E402

_REPORT: list[tuple[str, float]] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-width model tests (minutes on 2 cores); CI runs them, "
                                       "-m 'not slow' skips them locally")


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """The session's measured kernel choices in a temporary file (here and in the CLI's subprocesses), not
    in the user's cache."""
    from zaya1 import autotune, kernels

    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    patch = pytest.MonkeyPatch()
    patch.setenv(autotune.CACHE_ENV, str(path))
    patch.setattr(kernels, "TUNER", autotune.Tuner(path))
    yield path
    patch.undo()


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


@pytest.fixture(scope="session")
def chat(tmp_path_factory):
    """An upstream checkpoint with sliding layers, a tokenizer with a chat template and a
    generation_config.json whose EOS list has <end_of_turn> and a token the first prompt produces early
    (config.json's EOS, 1, is never produced): as chat checkpoints list end-of-turn only there."""
    path = tmp_path_factory.mktemp("chat")
    hf = build_hf_checkpoint(path, hf_config("sliding", vocab_size=320, tie_word_embeddings=False), seed=1,
                             prepare=prefer_words_)  # the tokenizer has ~317 ids
    tok = save_tokenizer(path)
    batch = tok(["the cat sat on the mat", "Hello world"], return_tensors="pt", padding=True, padding_side="left")
    free = hf.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=[])
    width = batch.input_ids.shape[1]
    row0, row1 = free[0, width:].tolist(), free[1, width:].tolist()
    stops = [t for t in row0[1:6] if t not in row1 and t not in row0[:1]]  # stops row 0 early, never row 1
    assert stops, f"pick another seed: no early stop token for row 0 alone ({row0} / {row1})"
    stop = stops[0]
    transformers.GenerationConfig(bos_token_id=2, eos_token_id=[1, 4, stop], pad_token_id=0).save_pretrained(path)
    hf = load_hf(path)  # reloaded: generation_config.json included
    return SimpleNamespace(path=path, hf=hf, tok=tok, batch=batch, stop=stop,
                           ours=zaya1.ZayaForCausalLM.from_pretrained(path), zt=Tokenizer.from_pretrained(path))
