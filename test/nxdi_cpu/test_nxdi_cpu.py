"""The Neuron backend through NxDI's CPU mode at tp 1 (in this process) and tp 2 (torchrun, gloo): each case of
cases.py against Zyphra's golden outputs and zaya1's CPU model (float32, max |dlogit| <= 1e-4, tokens equal)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("neuronx_distributed_inference", reason="NxDI is not installed: run the NxDI CPU stage in the "
                                                            "environment of scripts/nxdi_cpu_env.sh")
import cases  # noqa: E402
import neuron_sdk_shims  # noqa: E402
import torch  # noqa: E402

TOL, ROOT = cases.TOL, cases.ROOT
ARTIFACTS = Path(os.environ.get("ZAYA1_TEST_ARTIFACTS", ROOT / "out" / "nxdi-cpu"))
# the tiny golden model has one query head; NxDI's CPU mode samples on device from each rank's vocabulary shard
# at tp > 1 (its Sampler's cross-rank reduction exists only on Neuron), so on-device sampling is checked at tp 1
TP2_CASES = [name for name in cases.CASES if "tiny" not in name and not name.startswith("on_device")]


def check(name: str, r: dict) -> None:
    """The assertions of every case, whatever the tp degree."""
    assert r["ok"], r.get("traceback", r)
    assert not r["shims_reached"], r["shims_reached"]
    if name.startswith("golden"):
        assert r["vs_golden"] <= TOL and r["vs_cpu"] <= TOL and r["last_position_vs_golden"] <= TOL, r
        assert r["tokens_equal_golden"]
    elif name == "long_decode":
        assert r["vs_cpu"] <= TOL and r["decode_steps"] >= 8 and r["tokens_equal"], r
    elif name == "ragged":
        assert r["vs_cpu_alone"] <= TOL and r["teacher_forced_argmax_equal"] and r["generate_equal"], r
    elif name == "buckets":
        assert max(r["vs_cpu_by_prompt_len"].values()) <= TOL, r
    elif name == "continuous_batching":
        assert r["vs_cpu"] <= TOL and r["tokens_equal"], r
    elif name == "absent_rows":
        assert r["vs_cpu"] <= TOL and r["row_1_after_its_absence_vs_cpu"] <= TOL, r
    elif name == "odd_vocab":
        assert r["vocab_size"] % 2 == 1 and r["vs_cpu"] <= TOL and r["last_column_vs_cpu"] <= TOL, r
    elif name == "generate":
        assert all(r[k] for k in ("greedy_equal", "sampled_equal", "eos_equal", "eos_row_stopped",
                                  "streamed_equal", "refuses_beyond_seq_len", "refuses_max_length_beyond_seq_len",
                                  "refuses_beyond_batch")), r
    elif name == "on_device_greedy":
        assert r["tokens_equal"], r
    elif name == "nxdi_logit_check":
        assert r["positions_validated"] == [16, 16] and r["validations_run"] == 2, r
        assert r["max_error_all_columns"] <= 1e-4 and r["eos_masked_in_golden"] and r["golden_tokens_without_eos"], r
        assert r["scaled_golden"] == "Test fails logit validation.", r
    elif name == "fp8_experts":
        assert r["vs_cpu"] <= TOL and r["tokens_equal"] and r["manifest_expert_dtype"] == "fp8", r
        assert r["stored_vs_cpu"] <= TOL and r["stored_tokens_equal"] and r["stored_manifest_expert_dtype"] == "fp8", r
        assert r["vs_dense_bf16_weights"] > 10 * TOL, r  # the experts really are quantized
        assert r["codes_dtype"] == "torch.float8_e4m3fn" and r["codes_shape"][1] == r["local_rows"], r
    elif name == "on_device_sampling":
        # 512 draws: sampling noise alone gives ~0.08; temperature applied twice would be much further
        assert r["total_variation"] < 0.15 < r["total_variation_if_applied_twice"], r
    else:
        raise AssertionError(f"no check for case {name}")


def record(tp: int, name: str, result: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"results-tp{tp}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = {k: v for k, v in result.items() if k != "traceback"}
    path.write_text(json.dumps(data, indent=1))
    print(f"tp{tp} {name}: {data[name]}")


@pytest.mark.parametrize("name", list(cases.CASES))
def test_tp1(name, tmp_path_factory):
    result = cases.run([name], 1, str(tmp_path_factory.mktemp("ckpt")))[name]
    record(1, name, result)
    check(name, result)


@pytest.fixture(scope="module")
def tp2_results(tmp_path_factory) -> dict:
    """All tp-2 cases in one ``torchrun --nproc-per-node 2`` (NxDI's CPU mode initialises gloo once per process)."""
    tmp = tmp_path_factory.mktemp("tp2")
    env = cases.child_env()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", env["MASTER_PORT"], str(Path(cases.__file__)),
                          "--tp", "2", "--cases", ",".join(TP2_CASES), "--root", str(tmp), "--out",
                          str(tmp / "results.json")], env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return json.loads((tmp / "results.json").read_text())


@pytest.mark.parametrize("name", TP2_CASES)
def test_tp2(name, tp2_results):
    record(2, name, tp2_results[name])
    check(name, tp2_results[name])


def test_shims_raise_and_record():
    """The stubs can fail a test: reaching one raises and is recorded (then cleared, for this test only)."""
    from torch_neuronx.xla_impl.ops import Argmax

    with pytest.raises(neuron_sdk_shims.ShimReached):
        Argmax.apply(torch.zeros(2))
    assert neuron_sdk_shims.REACHED == ["torch_neuronx.xla_impl.ops.Argmax.apply"]
    del neuron_sdk_shims.REACHED[:]


def test_equivalents_are_used_and_counted():
    assert neuron_sdk_shims.EQUIVALENT_USES["torch_neuronx.utils.get_platform_target"] >= 1


def test_check_accuracy_script_end_to_end(tmp_path):
    """scripts/check_accuracy.py --cpu-mode --nxdi-check against the golden gqa model grown to 1024 tokens (NxDI's
    default tolerances need >= 1000): every position within 1e-4, top-1 equal, NxDI's check passed."""
    golden = cases.golden("gqa")["a_input_ids"][0].tolist()
    report = tmp_path / "accuracy.json"
    script = ROOT / "scripts" / "check_accuracy.py"
    code = ("import sys, runpy, neuron_sdk_shims; neuron_sdk_shims.install(); "
            f"sys.argv = [{str(script)!r}] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = cases.child_env(cases.HERE / "shims")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, "--model-path",
                          str(cases.vocab_checkpoint(tmp_path, 1024)), "--cpu-mode", "--nxdi-check", "--prompt-ids",
                          ",".join(map(str, golden)), "--num-tokens", "10", "--json", str(report)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "NxDI check_accuracy_logits_v2: passed" in run.stdout
    result = json.loads(report.read_text())
    record(1, "check_accuracy_script", {"max_abs_dlogit": result["max_abs_dlogit"],
                                        "top1_agreement": result["top1_agreement"]})
    assert result["max_abs_dlogit"] <= TOL and result["top1_agreement"] == 1.0
    assert len(result["positions"]) == 10


@pytest.mark.parametrize("tp", [1, 2])
def test_presharded_weights_are_the_plans_rank_shards(tp, tmp_path, monkeypatch):
    """What compile() saves (NxDI's shard_weights -> NxD's ModelBuilder.shard_checkpoint -> safetensors): one file
    per rank whose tensors are exactly zaya1's per-rank shards (zaya1.sharding, the plan SimulatedTP proves).
    At tp 1 the tied lm_head must not share memory with the embedding (safetensors refuses shared tensors)."""
    from safetensors.torch import load_file

    from zaya1 import ZayaForCausalLM
    from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig, ZayaNeuronConfig
    from zaya1.sharding import rank_state_dicts

    # sharding happens at compile time, never in a process that ran NxDI's CPU mode (as the tp-1 cases here
    # did): NXD_CPU_MODE, which to_cpu() sets for good, would route NxD's traced-sharding groups to gloo
    monkeypatch.delenv("NXD_CPU_MODE", raising=False)
    path = cases.golden_dir("gqa", "original")
    nc = ZayaNeuronConfig(tp_degree=tp, batch_size=2, seq_len=64, max_context_length=32, torch_dtype=torch.float32,
                          save_sharded_checkpoint=True)
    model = NeuronZayaForCausalLM(str(path), ZayaInferenceConfig.from_checkpoint(str(path), nc))
    model.shard_weights(str(tmp_path) + "/")
    cpu = ZayaForCausalLM.from_pretrained(path)
    for rank, expected in enumerate(rank_state_dicts(cpu.state_dict(), cpu.config, tp)):
        saved = load_file(str(tmp_path / "weights" / f"tp{rank}_sharded_checkpoint.safetensors"))
        missing = sorted(set(expected) - set(saved))
        assert not missing, missing
        for key, tensor in expected.items():
            assert torch.equal(saved[key], tensor), key
        vocab_rows = expected["model.embed_tokens.weight"].shape[0]
        assert torch.equal(saved["lm_head.weight"][:vocab_rows], expected["model.embed_tokens.weight"])
