"""The trn2 integration suite's logic that runs without Trainium (test/integration/trn2_helpers.py and the
first-run report): what the device is held to, and how a trn2 run is summarised."""
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import trn2_helpers  # noqa: E402

from zaya1 import ZayaForCausalLM, kernels  # noqa: E402


@pytest.mark.parametrize("name", ["tiny", "gqa"])
def test_bf16_reference_has_the_traced_graphs_numerics(name, monkeypatch):
    """The bf16 bound of the suite comes from the CPU path with the traced graph's numerics: under tracing
    (fp32_internals and the CPU bf16 kernels off, as when NxDI traces) zaya1's bf16 model gives bit for bit
    bf16_reference's logits, and the default CPU bf16 path (fp32 router and attention scores) does not."""
    monkeypatch.setattr(kernels, "EXACT", False)
    g = trn2_helpers.golden(name)
    model = ZayaForCausalLM.from_pretrained(trn2_helpers.golden_dir(name), dtype=torch.bfloat16)
    prompts, continuation = list(g["b_prompt_ids"]), g["b_generated_ids"][:, :-1]
    with torch.no_grad():
        reference = trn2_helpers.bf16_reference(model, prompts, continuation)
        default = trn2_helpers.teacher_forced(model, prompts, continuation)
        with mock.patch.object(torch.jit, "is_tracing", return_value=True):
            traced = trn2_helpers.teacher_forced(model, prompts, continuation)
    assert not kernels.EXACT  # restored
    assert torch.equal(reference, traced)
    assert not torch.equal(default, traced)


def test_neuron_devices_and_sdk_problem(tmp_path, monkeypatch):
    for name in ("neuron1", "neuron0", "neuron_monitor", "nvme0"):
        (tmp_path / name).touch()
    assert trn2_helpers.neuron_devices(tmp_path) == ["neuron0", "neuron1"]
    monkeypatch.setattr(trn2_helpers, "missing_sdk_packages", lambda: [])
    (tmp_path / "broken_adapter.py").write_text("raise ImportError('cannot import name X from transformers')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert trn2_helpers.sdk_problem(("json", "broken_adapter")) == (
        "import broken_adapter failed (ImportError: cannot import name X from transformers)")
    assert trn2_helpers.sdk_problem(("json",)) is None
    monkeypatch.setattr(trn2_helpers, "missing_sdk_packages", lambda: ["torch_neuronx"])
    assert trn2_helpers.sdk_problem(("json",)) == "Neuron SDK not installed (torch_neuronx missing)"


@pytest.mark.parametrize("devices, env, action", [
    ([], {}, "skip"), (["neuron0"], {}, "fail"), ([], {"ZAYA1_NEURON_HOST": "1"}, "fail"),
    (["neuron0"], {"ZAYA1_NEURON_HOST": "0"}, "skip")])
def test_suite_gate_fails_a_neuron_host_with_a_broken_sdk(devices, env, action):
    assert trn2_helpers.suite_gate(devices, None, env) == ("run", "")
    got, reason = trn2_helpers.suite_gate(devices, "import x failed (ImportError: y)", env)
    assert got == action and reason.startswith("import x failed (ImportError: y)")
    assert ("on a Neuron host" in reason) == (action == "fail")


@pytest.mark.parametrize("host", ["0", "1"])
def test_integration_suite_skips_off_neuron_and_fails_on_a_neuron_host(host):
    """The suite itself, here (no Neuron SDK): every test skipped off-Neuron; with ZAYA1_NEURON_HOST=1 every
    test errors with the reason before anything compiles, and pytest exits non-zero."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ZAYA1_NEURON_HOST=host, PYTHONPATH=os.pathsep.join(
        [str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "pytest", str(root / "test" / "integration"), "-q", "-rs", "-p",
                          "no:cacheprovider"], env=env, capture_output=True, text=True, timeout=300, cwd=root)
    summary = run.stdout.strip().splitlines()[-1]
    if host == "0":
        assert run.returncode == 0 and "passed" not in summary and "error" not in summary, run.stdout[-2000:]
        assert "Neuron SDK not installed" in run.stdout
    else:
        assert run.returncode == 1 and "skipped" not in summary and "passed" not in summary, run.stdout[-2000:]
        assert "error" in summary and "on a Neuron host (ZAYA1_NEURON_HOST=1)" in run.stdout


def perf_records(ttft_b1: float, decode_b1: float, decode_b4: float) -> list[dict]:
    return [{"metric": "ttft", "value": ttft_b1, "batch": 1}, {"metric": "decode", "value": decode_b1, "batch": 1},
            {"metric": "ttft", "value": 99.0, "batch": 4}, {"metric": "decode", "value": decode_b4, "batch": 4}]


def test_versus_published_flags_each_figure_worse_than_pr_127():
    """ZAYA1-8B at TP 2 (PR #127): 31.7 / 112.6 tok/s, 58.8 ms. Decode must be at least, TTFT at most, those."""
    rows = {r["figure"]: r for r in trn2_helpers.versus_published(perf_records(58.8, 31.7, 112.6), "zaya1-8b")}
    assert not any(r["worse"] for r in rows.values()) and not any(r["meets_target"] for r in rows.values())
    rows = {r["figure"]: r for r in trn2_helpers.versus_published(perf_records(58.9, 250.0, 112.5), "zaya1-8b")}
    assert [f for f, r in rows.items() if r["worse"]] == ["decode_b4", "ttft_ms"]
    assert rows["decode_b1"]["meets_target"] and rows["decode_b1"]["target"] == 200.0
    base = {r["figure"]: r for r in trn2_helpers.versus_published(perf_records(75.6, 22.3, 86.3), "zaya1-base")}
    assert [r["published"] for r in base.values()] == [22.3, 86.3, 75.6] and not any(r["worse"] for r in base.values())
    assert [r["target"] for r in base.values()] == [200.0, 600.0, 30.0]
    with pytest.raises(ValueError, match="no decode record at batch 4"):
        trn2_helpers.versus_published(perf_records(1, 1, 1)[:2], "zaya1-8b")


def test_published_key_from_the_checkpoint_name_or_the_environment(tmp_path):
    assert trn2_helpers.published_key(tmp_path / "ZAYA1-8B", {}) == "zaya1-8b"
    assert trn2_helpers.published_key(tmp_path / "zaya1_base", {}) == "zaya1-base"
    assert trn2_helpers.published_key(tmp_path / "my-model", {}) is None
    assert trn2_helpers.published_key(tmp_path / "my-model", {"ZAYA1_PERF_BASELINE": "zaya1-base"}) == "zaya1-base"
    with pytest.raises(ValueError, match="ZAYA1_PERF_BASELINE='8b'"):
        trn2_helpers.published_key(tmp_path, {"ZAYA1_PERF_BASELINE": "8b"})


def test_suite_configs_cover_the_512_bucket_and_its_block_256_moe_path(tmp_path):
    """The real checkpoint's configs include a 512-token context bucket, which at ZAYA1's 16 experts takes the
    MoE's block-256 path (the 128 / 256 buckets of REAL_SETTINGS take blocks of 128); tiny shards only at tp 1."""
    from zaya1 import ZayaConfig
    from zaya1.moe import block_size_for

    configs = trn2_helpers.suite_configs(4, tmp_path)
    assert sorted(configs) == ["cb-gqa", "golden-gqa-bfloat16", "golden-gqa-float32", "real-b1", "real-b4", "real-b8",
                               "real-ctx512"]
    path, settings = configs["real-ctx512"]
    experts = ZayaConfig().num_experts
    assert path == tmp_path and settings["buckets"] == "512" and trn2_helpers.CTX512_PROMPT < 512
    assert block_size_for(512 * settings["batch_size"], experts) == 256
    assert {block_size_for(int(b), experts) for b in trn2_helpers.REAL_SETTINGS["buckets"].split(",")} == {128}
    assert "golden-tiny-float32" in trn2_helpers.suite_configs(1, None) and not any(
        name.startswith("real") for name in trn2_helpers.suite_configs(1, None))
