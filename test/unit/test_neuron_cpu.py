"""The Neuron backend's CPU-checkable parts: lazy imports, install errors, the compile plan, source sanity."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zaya1
from zaya1 import NeuronUnavailableError
from zaya1.config import ZayaConfig
from zaya1.family import ZAYA1_74B
from zaya1.neuron import missing_sdk_packages, sdk_available
from zaya1.neuron.compile_cli import TRN2_LOGICAL_CORE_HBM
from zaya1.simulated_tp import describe_plan

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "test" / "data" / "golden" / "zaya1-original-gqa"
no_sdk = pytest.mark.skipif(sdk_available(), reason="checks the behaviour without the Neuron SDK")


def test_import_zaya1_does_not_import_the_sdk():
    code = ("import sys, zaya1, zaya1.tools.cli, zaya1.generation, zaya1.sharding, zaya1.simulated_tp, zaya1.neuron.artifacts; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch_neuronx', 'neuronx_distributed', 'neuronx_distributed_inference')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@no_sdk
@pytest.mark.parametrize("name", ["NeuronZayaForCausalLM", "ZayaInferenceConfig", "ZayaNeuronConfig"])
def test_neuron_names_explain_how_to_install(name):
    cls = getattr(zaya1, name)
    with pytest.raises(NeuronUnavailableError, match="Neuron SDK is not installed.*pip install"):
        cls()
    with pytest.raises(NeuronUnavailableError, match=missing_sdk_packages()[0]):
        cls.from_pretrained  # noqa: B018  (any attribute)
    assert issubclass(NeuronUnavailableError, ImportError)


@no_sdk
def test_register_without_sdk_says_what_is_missing():
    from zaya1.neuron import register

    with pytest.raises(NeuronUnavailableError, match="register"):
        register()


def test_vllm_plugin_registers_the_auto_config_only_where_transformers_lacks_zaya():
    """The vLLM general plugin in a process without the Neuron SDK and vLLM: AutoConfig reads ZAYA1 through
    upstream's ZayaConfig when transformers has one (>= 5.23), else through zaya1's, with canonical fields."""
    pytest.importorskip("transformers")
    code = ("import transformers; from transformers import AutoConfig; "
            "known = 'zaya' in transformers.models.auto.configuration_auto.CONFIG_MAPPING; "
            "from zaya1.neuron.vllm_plugin import register; register(); register(); "
            f"c = AutoConfig.from_pretrained({str(GOLDEN / 'hf-layout')!r}); "
            "print(known, type(c).__module__, c.num_attention_heads, c.num_key_value_heads, c.head_dim)")
    known, module, *fields = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                            text=True).stdout.split()
    assert module == ("transformers.models.zaya.configuration_zaya" if known == "True" else "zaya1.neuron.hf_config")
    assert fields == ["4", "2", "128"]


def test_neuron_sdk_is_imported_only_inside_the_neuron_package():
    sdk = ("neuronx_distributed", "torch_neuronx", "libneuronxla")
    for path in (ROOT / "src" / "zaya1").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))  # every module parses
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        if path.parent.name != "neuron":
            assert not [n for n in names if n.startswith(sdk)], f"Neuron SDK import outside zaya1.neuron: {path}"


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_plan_shapes_for_zaya1(tp):
    lines = "\n".join(describe_plan(ZayaConfig(), tp, batch_size=4, seq_len=4096, dtype=torch.bfloat16))
    assert f"q_proj [{1024 // tp}, 2048]" in lines
    assert f"o_proj [2048, {1024 // tp}]" in lines
    assert f"gate_up [16, {4096 // tp}, 2048]" in lines
    # KV heads: split while tp <= 2, then replicated (one per rank)
    assert f"k_proj [{256 // min(tp, 2)}, 2048]" in lines
    assert ("replicated across ranks" in lines) == (tp > 2)


def plan_gib(config, tp: int, **kwargs) -> tuple[float, str]:
    lines = describe_plan(config, tp, batch_size=1, seq_len=8192, dtype=torch.bfloat16,
                          memory_per_rank=TRN2_LOGICAL_CORE_HBM, **kwargs)
    return float(lines[-2].split("weights ")[1].split(" GiB")[0]), lines[-1]


def test_74b_memory_plan_per_logical_core():
    """ZAYA1-74B-preview at tp 4 on a trn2 logical core (24 GiB): bf16 weights do not fit; fp8 experts (1 byte
    per expert weight plus an fp32 scale per row) do, and the plan's bytes are exactly that saving."""
    config = ZayaConfig.from_dict(ZAYA1_74B)
    bf16, bf16_fit = plan_gib(config, 4)
    fp8, fp8_fit = plan_gib(config.replace(expert_quantization="fp8"), 4)
    c, tp = config, 4
    experts = c.num_hidden_layers * c.num_experts * 3 * c.hidden_size * c.moe_intermediate_size // tp
    rows = c.num_hidden_layers * c.num_experts * (2 * c.moe_intermediate_size // tp + c.hidden_size)
    assert abs(fp8 - (bf16 - (experts - 4 * rows) / 2 ** 30)) <= 0.01
    assert "does NOT fit" in bf16_fit and "fits" in fp8_fit
    assert "fits" in plan_gib(config, 8)[1]  # bf16 across two chips' logical cores (trn2.48xlarge)


def test_compile_dry_run_prints_the_plan_without_the_sdk(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--model-path", str(GOLDEN),
                          "--compiled-model-path", str(tmp_path / "c"), "--tp-degree", "2", "--batch-size", "2",
                          "--max-context-length", "64", "--seq-len", "128", "--buckets", "32,64", "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    assert "rank 0 holds query heads [0, 1], KV heads [0]" in out
    assert "context-encoding buckets [32, 64]" in out
    assert not (tmp_path / "c").exists()  # a dry run writes nothing


def test_compile_rejects_bad_tp_before_any_work(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--model-path", str(GOLDEN),
                          "--compiled-model-path", str(tmp_path / "c"), "--tp-degree", "3", "--seq-len", "128",
                          "--max-context-length", "64"], capture_output=True, text=True)
    assert res.returncode == 2 and "tp_degree=3 does not divide the 4 query heads" in res.stderr
    assert not (tmp_path / "c").exists()
