"""vllm-neuron's model loader, call by call, on zaya1 in NxDI's CPU mode: each test runs the calls vllm-neuron
0.2 makes (vllm_neuron/worker/neuronx_distributed_model_loader.py) in a fresh Python process, so the general
plugin's registrations are made the way vLLM makes them (once per process) and nothing leaks between tests.

vLLM itself is not installed here: the vLLM side is its documented plugin / registry contract (entry point
group ``vllm.general_plugins``; ``ModelRegistry.register_model(arch, "module:Class")``). Everything from
``load_pretrained_config`` on is the real NxDI, with only the absent Neuron SDK shimmed (shims/).

NxDI's model registry module (``utils/constants.py``) imports every NxDI model, and some of those read NKI
kernel constants at import time that the CPU shims do not provide (e.g. gpt_oss's ``nl.tile_size.pmax``). Where
it cannot import, the subprocess puts a module holding only an empty ``MODEL_TYPES`` dict under its name, and
the test says so in its result (``registry``); on trn2 the real module is used.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest

PLUGIN = "zaya1=zaya1.vllm_plugin:register"  # one entry point; without vllm-neuron >= 0.21: the NxDI registration

pytest.importorskip("neuronx_distributed_inference", reason="needs NxD + NxDI installed (the nxdi-cpu venv, see "
                                                            "test/nxdi_cpu)")
import cases  # noqa: E402

ROOT, TOL = cases.ROOT, cases.TOL
LAYOUTS = {layout: cases.golden_dir("gqa", layout) for layout in ("original", "hf")}

SHIMS = """
sys.path.insert(0, "test/nxdi_cpu/shims")
import neuron_sdk_shims
neuron_sdk_shims.install()
try:
    import neuronx_distributed_inference.utils.constants
    registry = "real"
except (ImportError, neuron_sdk_shims.ShimReached) as exc:  # module docstring
    registry = f"stand-in ({type(exc).__name__}: {str(exc)[:120]})"
    stand_in = types.ModuleType("neuronx_distributed_inference.utils.constants")
    stand_in.MODEL_TYPES = {}
    sys.modules[stand_in.__name__] = stand_in
"""

# vllm-neuron's _get_neuron_model_cls / _camel_to_kebab / _get_model_configs (the lookup it makes)
VLLM_NEURON_LOOKUP = """
import re
from neuronx_distributed_inference.utils.constants import MODEL_TYPES

def camel_to_kebab(name):
    s1 = re.sub("(.)([A-Z][a-z]+)", r"\\1-\\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\\1-\\2", s1).lower()

def neuron_model_cls(architecture):
    model, task = architecture.split("For", 1)
    return MODEL_TYPES[model.lower()][camel_to_kebab(task)]
"""

# vllm-neuron's _get_default_neuron_config for max_num_seqs=2, max_model_len=64, block_size=16, float32, tp 1
VLLM_NEURON_DEFAULTS = """
import torch
from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig

def vllm_neuron_defaults(prefix_caching=False, batch_size=2, max_model_len=64, block_size=16):
    return dict(tp_degree=1, ctx_batch_size=1, batch_size=batch_size, max_context_length=max_model_len,
                seq_len=max_model_len, enable_bucketing=True, is_continuous_batching=batch_size > 1,
                quantized=False, torch_dtype=torch.float32, padding_side="right",
                on_device_sampling_config=OnDeviceSamplingConfig(dynamic=True, deterministic=False),
                lora_config=None, pa_num_blocks=max_model_len // block_size * batch_size, pa_block_size=block_size,
                is_block_kv_layout=prefix_caching, is_prefix_caching=prefix_caching)
"""


def declared_plugins() -> list[str]:
    """setup.py's ``vllm.general_plugins`` entry points, read by running setup.py with setup() captured."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            runpy.run_path(str(ROOT / "setup.py"))
        finally:
            os.chdir(cwd)
    return captured["entry_points"].get("vllm.general_plugins", [])


def run(body: str, shims: bool = True, extra_path: str = "", timeout: int = 900) -> dict:
    """Run ``body`` in a fresh interpreter (repo root, PYTHONPATH=src, shims installed first); it sets
    ``result`` (JSON-able), which comes back."""
    code = "import json, sys, types, warnings\n" + (SHIMS if shims else "registry = None\n") + textwrap.dedent(body)
    code += "\nprint('RESULT ' + json.dumps(dict(result, registry=registry)))\n"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=cases.child_env(extra_path), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    print(f"registry: {result['registry']}")
    return result


def call_plugin_as_vllm_does(value: str) -> str:
    """vLLM's load_general_plugins: load the entry point, call it (here twice: every process calls it once,
    and a process may load plugins more than once)."""
    return f"""
from importlib.metadata import EntryPoint
plugin = EntryPoint(name="zaya1", value={value!r}, group="vllm.general_plugins").load()
plugin()
plugin()
"""


# ---------------------------------------------------------------------------------------------- discovery
def test_setup_declares_the_general_plugin():
    assert declared_plugins() == [PLUGIN]


def test_installed_entry_point_is_discovered():
    """vLLM's discovery: importlib.metadata's entry points of the installed zaya1 (on the subprocess's path)."""
    out = run("""
from importlib.metadata import PackageNotFoundError, distribution, entry_points
try:
    dist = str(distribution("zaya1")._path)
except PackageNotFoundError:
    dist = None
found = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "zaya1"]
for ep in found:
    ep.load()()
from transformers import AutoConfig
result = {"dist": dist, "values": [ep.value for ep in found],
          "type": type(AutoConfig.from_pretrained("test/data/golden/zaya1-original-gqa")).__name__ if found else None}
""")
    if out["dist"] is None:
        pytest.skip("zaya1 is not installed in this venv, so its entry points are not discoverable: "
                    "`pip install --no-deps -e .` (CI does); setup.py's declaration is tested above")
    assert out["values"] == [PLUGIN.split("=", 1)[1]], (
        f"the installed zaya1 metadata ({out['dist']}) does not declare the plugin: reinstall it "
        f"(pip install --no-deps -e .)")
    assert out["type"] in ("ZayaHFConfig", "ZayaConfig")  # zaya1's on transformers < 5.23, else upstream's


def test_plugin_is_safe_without_the_sdk_and_without_vllm():
    """The plugin runs in every vLLM process, on every platform: without the Neuron SDK (no shims) and
    without vLLM it registers only the AutoConfig and raises nothing."""
    out = run(call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + """
import importlib.util
from transformers import AutoConfig
from zaya1.neuron import sdk_available
result = {"sdk": sdk_available(), "vllm": importlib.util.find_spec("vllm") is not None,
          "heads": AutoConfig.from_pretrained("test/data/golden/zaya1-original-gqa").num_attention_heads}
""", shims=False)
    assert (out["sdk"], out["vllm"], out["heads"]) == (False, False, 4)


# ---------------------------------------------------------------------------------------------- AutoConfig
@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_config_gives_the_canonical_fields(layout):
    """What vLLM's ModelConfig and vllm-neuron's _get_model_configs read, for both layouts. The expected
    values are the HF-layout twin's config.json as written (the upstream meaning of each field)."""
    out = run(call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + f"""
from transformers import AutoConfig
config = AutoConfig.from_pretrained({str(LAYOUTS[layout])!r})
fields = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
          "vocab_size", "max_position_embeddings")
result = {{"type": type(config).__name__, "architecture": config.architectures[0],
          "fields": {{name: getattr(config, name) for name in fields}},
          "round_trip": {{name: getattr(type(config).from_dict(config.to_dict()), name) for name in fields}}}}
""")
    upstream = json.loads((LAYOUTS["hf"] / "config.json").read_text())
    expected = {name: upstream[name] for name in out["fields"]}
    assert out["type"] == "ZayaHFConfig" and out["architecture"] == "ZayaForCausalLM"
    assert out["fields"] == expected
    assert out["round_trip"] == expected


# ---------------------------------------------------------------------------------------------- registries
def test_model_types_lookup_like_vllm_neuron():
    out = run(call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + VLLM_NEURON_LOOKUP + """
import zaya1.neuron
cls = neuron_model_cls("ZayaForCausalLM")
result = {"cls": cls.__qualname__, "is_zaya1s": cls is zaya1.neuron.NeuronZayaForCausalLM,
          "others_kept": sorted(MODEL_TYPES) if registry == "real" else None}
""")
    assert out["cls"] == "NeuronZayaForCausalLM" and out["is_zaya1s"]
    if out["others_kept"] is not None:
        assert "llama" in out["others_kept"] and "zaya" in out["others_kept"]


def test_vllm_model_registry_entry(tmp_path, monkeypatch):
    """vLLM's ModelRegistry contract (vLLM is absent here, so a recording ModelRegistry stands in): the
    plugin registers "ZayaForCausalLM" as a lazy "module:Class" once, never over vLLM's own class, and
    the class it names satisfies vLLM's model interface but refuses to be built."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text(textwrap.dedent("""
        import os
        class ModelRegistry:
            calls = []
            archs = set(filter(None, os.environ.get("FAKE_VLLM_ARCHS", "").split(",")))
            @classmethod
            def get_supported_archs(cls):
                return cls.archs
            @classmethod
            def register_model(cls, arch, model):
                cls.calls.append([arch, model])
                cls.archs.add(arch)
    """))
    body = call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + """
import importlib, inspect
from vllm import ModelRegistry
from zaya1.errors import NeuronUnavailableError
result = {"calls": ModelRegistry.calls}
for arch, target in ModelRegistry.calls:
    module, name = target.split(":")
    stub = getattr(importlib.import_module(module), name)
    result["init_kw"] = list(inspect.signature(stub.__init__).parameters)
    result["forward_kw"] = list(inspect.signature(stub.forward).parameters)
    result["compute_logits"] = callable(getattr(stub, "compute_logits", None))
    try:
        stub(vllm_config=None)
    except NeuronUnavailableError as exc:
        result["error"] = str(exc)
"""
    out = run(body, extra_path=str(tmp_path))
    assert out["calls"] == [["ZayaForCausalLM", "zaya1.neuron.vllm_plugin:ZayaForCausalLMStub"]]
    assert {"vllm_config", "prefix"} <= set(out["init_kw"]) and out["forward_kw"][1:3] == ["input_ids", "positions"]
    assert out["compute_logits"] and "vllm-neuron" in out["error"] and "\n" not in out["error"]
    monkeypatch.setenv("FAKE_VLLM_ARCHS", "ZayaForCausalLM")  # vLLM's own ZayaForCausalLM is kept
    assert run(body, extra_path=str(tmp_path))["calls"] == []


# ---------------------------------------------------------------------------------------------- config + run
BUILD = call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + VLLM_NEURON_LOOKUP + VLLM_NEURON_DEFAULTS + """
import torch
from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config
from safetensors.torch import load_file
from zaya1 import ZayaConfig, ZayaForCausalLM
from zaya1.generation import teacher_forced_logits

def build(path, **changes):
    cls = neuron_model_cls("ZayaForCausalLM")
    neuron_config = cls.get_neuron_config_cls()(**dict(vllm_neuron_defaults(), on_cpu=True, **changes))
    config = cls.get_config_cls()(neuron_config, load_config=load_pretrained_config(path))
    return cls, config

ids = load_file("test/data/golden/zaya1-original-gqa/golden.safetensors")["a_input_ids"]
prompts = {1: ids[0, :9], 0: ids[1, :5]}  # seq_id -> prompt; prefilled in this order, one per call

def prefill(model, seq_id, prompt, sampling_params=None):
    return model(prompt[None].to(torch.int32), attention_mask=None, seq_ids=torch.tensor([seq_id], dtype=torch.int32),
                 position_ids=torch.arange(len(prompt), dtype=torch.int32)[None], sampling_params=sampling_params)

def decode(model, tokens, positions, sampling_params=None):  # rows sorted by seq_id, as vllm-neuron sorts
    return model(tokens[:, None].to(torch.int32), attention_mask=None, seq_ids=torch.arange(len(tokens), dtype=torch.int32),
                 position_ids=positions[:, None].to(torch.int32), sampling_params=sampling_params)
"""


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vllm_neuron_config_and_cpu_run(layout):
    """vllm-neuron's neuron config (prefix caching off, on-device sampling off so logits come back) and
    ZayaInferenceConfig(nc, load_config=load_pretrained_config(path)); then continuous batching as vllm-neuron
    drives NxDI's forward: two sequences prefilled one per call into rows 1 and 0, then 4 decode steps of
    both rows, each at its own position. Logits vs zaya1's CPU model (teacher-forced on its greedy tokens)."""
    out = run(BUILD + f"""
path = {str(LAYOUTS[layout])!r}
cls, config = build(path, on_device_sampling_config=None)
model = cls(path, config)
model.to_cpu()
cpu = ZayaForCausalLM.from_pretrained(path)
steps = 4
continuation = {{s: cpu.generate(p[None], max_new_tokens=steps, eos_token_id=[])[0, len(p):] for s, p in prompts.items()}}
expected = {{s: teacher_forced_logits(cpu, p[None], continuation[s][None, :-1])[0] for s, p in prompts.items()}}
vocab = config.vocab_size
got = {{s: [prefill(model, s, p).logits[0, -1, :vocab]] for s, p in prompts.items()}}
positions = torch.tensor([len(prompts[0]), len(prompts[1])])
for k in range(steps - 1):
    tokens = torch.stack([continuation[0][k], continuation[1][k]])
    logits = decode(model, tokens, positions + k).logits[:, -1, :vocab]
    got[0].append(logits[0])
    got[1].append(logits[1])
worst = max((torch.stack(got[s]).double() - expected[s].double()).abs().max().item() for s in prompts)
result = {{"zaya_config_equal": config.zaya_config == ZayaConfig.from_pretrained(path), "vs_cpu": worst,
          "buckets": list(config.neuron_config.buckets), "continuous_batching": config.neuron_config.is_continuous_batching}}
""")
    print(f"parity max|dlogit| vllm-neuron-style CB prefill+decode vs CPU ({layout}): {out['vs_cpu']:.3g}")
    assert out["zaya_config_equal"] and out["continuous_batching"]
    assert out["vs_cpu"] <= TOL


def test_vllm_neuron_default_on_device_sampling_is_greedy_with_top_k_1():
    """vllm-neuron's default OnDeviceSamplingConfig(dynamic=True, deterministic=False), CPU-mode sampler
    (on_cpu), per-request sampling_params top_k=1: the tokens (vllm-neuron reads output.hidden_states) are
    zaya1's CPU greedy tokens."""
    out = run(BUILD + """
from neuronx_distributed_inference.modules.generation.sampling import prepare_sampling_params
path = "test/data/golden/zaya1-original-gqa/hf-layout"
cls, config = build(path)
model = cls(path, config)
model.to_cpu()
cpu = ZayaForCausalLM.from_pretrained(path)
steps = 6
expected = {s: cpu.generate(p[None], max_new_tokens=steps, eos_token_id=[])[0, len(p):].tolist() for s, p in prompts.items()}
greedy = lambda n: prepare_sampling_params(n, top_k=[1] * n, top_p=[1.0] * n, temperature=[1.0] * n)
got = {s: [int(prefill(model, s, p, greedy(1)).hidden_states.reshape(-1)[-1])] for s, p in prompts.items()}
positions = torch.tensor([len(prompts[0]), len(prompts[1])])
for k in range(steps - 1):
    tokens = decode(model, torch.tensor([got[0][-1], got[1][-1]]), positions + k, greedy(2)).hidden_states.reshape(2, -1)[:, -1]
    got[0].append(int(tokens[0]))
    got[1].append(int(tokens[1]))
result = {"got": got, "expected": expected, "dynamic": config.neuron_config.on_device_sampling_config.dynamic}
""")
    assert out["dynamic"] and out["got"] == out["expected"]


def test_vllm_neuron_defaults_with_prefix_caching_are_refused():
    """vLLM 0.11 enables prefix caching by default, so vllm-neuron asks for block KV + prefix caching: the
    neuron config refuses with one line that names the field and the vLLM flag."""
    out = run(call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + VLLM_NEURON_LOOKUP + VLLM_NEURON_DEFAULTS + """
from zaya1.errors import ConfigError
try:
    neuron_model_cls("ZayaForCausalLM").get_neuron_config_cls()(**vllm_neuron_defaults(prefix_caching=True))
    result = {"error": None}
except ConfigError as exc:
    result = {"error": str(exc)}
""")
    assert out["error"] is not None, "prefix caching was accepted"
    assert "--no-enable-prefix-caching" in out["error"] and "\n" not in out["error"]
    assert out["error"].startswith(("is_block_kv_layout=True", "is_prefix_caching=True"))


def test_load_of_artifacts_without_zaya1_manifest(tmp_path):
    """vllm-neuron loads compiled artifacts with ``cls(path).load(path)`` (config from neuron_config.json) and
    recompiles on FileNotFoundError / ValueError. A directory NxDI's own compile() wrote has no zaya1 manifest:
    load() warns that zaya1's checks were skipped. Nothing can be compiled here, so the directory holds only
    neuron_config.json, and loading must then fail in a way that makes vllm-neuron compile."""
    out = run(BUILD + f"""
path = "test/data/golden/zaya1-original-gqa/hf-layout"
cls, config = build(path)
config.save({str(tmp_path)!r})
model = cls({str(tmp_path)!r})  # vllm-neuron's _load_compiled_model
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        model.load({str(tmp_path)!r})
        error = None
    except Exception as exc:
        error = [c.__name__ for c in type(exc).__mro__], str(exc)[:300]
from zaya1.neuron.artifacts import MANIFEST_NAME
result = {{"warnings": [str(w.message) for w in caught if MANIFEST_NAME in str(w.message)], "error": error,
          "config_read": model.config.zaya_config == ZayaConfig.from_pretrained(path)}}
""")
    assert out["config_read"], out
    assert len(out["warnings"]) == 1 and "were skipped" in out["warnings"][0], out
    assert out["error"] is not None and {"FileNotFoundError", "ValueError"} & set(out["error"][0]), out["error"]



# ---------------------------------------------------------------------------------------------- vllm-neuron 0.5
# vllm-neuron 0.5.0, the DLAMI's (vllm_neuron/worker/neuronx_distributed_model_loader.py and
# neuronx_distributed_model_runner.py @ 3afb0a9, "Release 0.5.0"): the calls its get_neuron_model /
# _load_weights_common make on the model class and NxDI, and the tensors its runner passes to NxDI's forward
VLLM_NEURON_05 = """
import hashlib, math, tempfile
from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig
from neuronx_distributed_inference.modules.generation.sampling import prepare_sampling_params
from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config
from transformers import AutoConfig

def neuron_model_cls(architecture):  # _get_neuron_model_cls: a "Neuron" prefix is dropped, then 0.2's lookup
    if architecture.startswith("Neuron") and "For" in architecture:
        architecture = architecture[len("Neuron"):]
    model, task = architecture.split("For", 1)
    return MODEL_TYPES[model.lower()][camel_to_kebab(task)]

def load(path, max_model_len, max_num_seqs, block_size=16, override=None):
    hf = AutoConfig.from_pretrained(path)  # vLLM's ModelConfig.hf_config; then _get_model_configs
    architecture, kv_heads = hf.architectures[0], int(hf.num_key_value_heads)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    cls = neuron_model_cls(architecture)
    neuron_config = dict(  # _get_default_neuron_config (no chunked prefill, prefix caching, LoRA or speculation)
        tp_degree=1, ctx_batch_size=1, batch_size=max_num_seqs, max_context_length=max_model_len,
        seq_len=max_model_len, enable_bucketing=True, is_continuous_batching=max_num_seqs > 1, quantized=False,
        torch_dtype="float32", padding_side="right",
        on_device_sampling_config=OnDeviceSamplingConfig(dynamic=True, deterministic=False), lora_config=None,
        pa_num_blocks=math.ceil(max_model_len // block_size) * max_num_seqs, pa_block_size=block_size,
        is_block_kv_layout=False, is_prefix_caching=False)
    neuron_config.update(override or {})  # _get_neuron_config_after_override
    neuron_config.pop("draft_overrides", None)  # _load_weights_common from here on
    config = cls.get_config_cls()(cls.get_neuron_config_cls()(**neuron_config),
                                  load_config=load_pretrained_config(path))
    digest = hashlib.md5(config.to_json_string().encode("utf-8")).hexdigest()  # names the artifacts folder
    compiled = tempfile.mkdtemp()  # NEURON_COMPILED_ARTIFACTS, empty: _load_compiled_model fails, so it compiles
    try:
        cls(compiled).load(compiled)
        load_error = None
    except (FileNotFoundError, ValueError) as exc:
        load_error = type(exc).__name__
    model = cls(path, config)  # _compile_and_load_model; compile() + load() are NxDI's CPU mode here
    model.to_cpu()
    return model, (architecture, kv_heads, head_dim), digest, load_error

def forward(model, seqs, tokens, positions, max_num_seqs):
    \"\"\"One runner step for sequence slots ``seqs`` (tokens / positions: lists per sequence): the runner's
    tensors (no prefix caching: empty block table and slot mapping), NeuronCausalLM.forward's sort by slot
    (tensors of the step's batch size only) and its restore; greedy requests (temperature 0: top_k 1), their
    sampling params cut to the step's batch (get_nxd_sampling_params).\"\"\"
    prefill = len(tokens[0]) > 1
    width = max(len(t) for t in tokens)
    pad = lambda rows: torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    ids, order = torch.sort(torch.tensor(seqs, dtype=torch.long))
    inputs = {"input_ids": pad(tokens), "position_ids": pad(positions),
              "full_context_lens": torch.tensor([[p[-1] + 1] for p in positions]),
              "computed_context_lens": (torch.empty(0, 1, dtype=torch.long) if prefill else
                                        torch.tensor([[p[-1]] for p in positions])),
              "sampling_params": prepare_sampling_params(max_num_seqs, top_k=[1] * max_num_seqs, top_p=[1.0] *
                                                         max_num_seqs, temperature=[1.0] * max_num_seqs)[:len(seqs)]}
    inputs = {k: v.index_select(0, order) if v.shape[0] == len(seqs) else v for k, v in inputs.items()}
    empty = torch.tensor([], dtype=torch.long)
    out = model(inputs.pop("input_ids"), attention_mask=None, seq_ids=ids, block_table=empty, adapter_ids=None,
                slot_mapping=torch.empty(0, model.neuron_config.seq_len, dtype=torch.long) if prefill else empty,
                **inputs).hidden_states
    out = out.reshape(len(seqs), -1)[:, -1]
    return out.index_select(0, torch.argsort(order)) if len(seqs) > 1 else out
"""


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vllm_neuron_05_loader_and_cpu_run(layout):
    """vllm-neuron 0.5's loader on zaya1 (defaults for max_num_seqs 2, max_model_len 64; ``on_cpu`` added for NxDI's
    CPU-mode sampler, as in the 0.2 replay), then its runner's
    steps through NxDI's forward: two prompts prefilled one per step into slots 1 and 0, decode steps of both,
    one step of slot 0 alone (vLLM need not schedule every running request), then both again. The on-device
    greedy tokens equal zaya1's CPU greedy continuation of each prompt."""
    out = run(BUILD + VLLM_NEURON_05 + f"""
path = {str(LAYOUTS[layout])!r}
model, sizes, digest, load_error = load(path, max_model_len=64, max_num_seqs=2, override={{"on_cpu": True}})
cpu = ZayaForCausalLM.from_pretrained(path)
got = {{s: [int(forward(model, [s], [p.tolist()], [list(range(len(p)))], 2)[0])] for s, p in prompts.items()}}
for seqs in ([0, 1], [0, 1], [0], [0, 1], [0, 1]):
    step = forward(model, seqs, [[got[s][-1]] for s in seqs],
                   [[len(prompts[s]) + len(got[s]) - 1] for s in seqs], 2)
    for s, token in zip(seqs, step.tolist()):
        got[s].append(token)
expected = {{s: cpu.generate(p[None], max_new_tokens=len(got[s]), eos_token_id=[])[0, len(p):].tolist()
            for s, p in prompts.items()}}
result = {{"got": got, "expected": expected, "sizes": list(sizes), "digest": digest, "load_error": load_error,
          "max_prompt": model.neuron_config.max_context_length}}
""")
    upstream = json.loads((LAYOUTS["hf"] / "config.json").read_text())
    assert out["sizes"] == ["ZayaForCausalLM", upstream["num_key_value_heads"], upstream["head_dim"]]
    assert len(out["digest"]) == 32 and out["load_error"] in ("FileNotFoundError", "ValueError"), out
    assert out["max_prompt"] == 64
    assert out["got"] == out["expected"] and len(out["got"]["0"]) == 6 and len(out["got"]["1"]) == 5, out


# ---------------------------------------------------------------------------------------------- vLLM 0.16 itself
VLLM_SITE = Path(os.environ.get("ZAYA1_VLLM_SITE", Path.home() / ".cache" / "zaya1" / "vllm-0.16.0"))
needs_vllm = pytest.mark.skipif(not (VLLM_SITE / ".zaya1-stamp").is_file(), reason=(
    f"vLLM 0.16.0 is not built in {VLLM_SITE}: run scripts/vllm_env.sh \"$(scripts/nxdi_cpu_env.sh | tail -n 1)\" "
    f"(CI does)"))


@needs_vllm
@pytest.mark.parametrize("layout", LAYOUTS)
def test_vllm_016_accepts_zaya1_as_a_generation_model(layout):
    """vLLM 0.16's own code (the version vllm-neuron 0.5 runs on) after the plugin, as ``vllm serve <checkpoint>``
    starts: ``vllm.config.ModelConfig`` reads config.json through the plugin's AutoConfig registration, resolves
    "ZayaForCausalLM" through vLLM's ModelRegistry (the plugin's lazy "module:Class" entry, which vLLM inspects
    in a subprocess: interfaces_base.is_text_generation_model and the rest of its _ModelInfo) and picks the
    "generate" runner (without embed_input_ids it refuses: "This model does not support `--runner generate`").
    The sizes vLLM reads are the HF-layout config.json's; the stub vLLM would build raises the stub's error."""
    out = run(call_plugin_as_vllm_does(PLUGIN.split("=", 1)[1]) + f"""
import torch
import vllm
from vllm import ModelRegistry
from vllm.config import ModelConfig
from vllm.model_executor.models.interfaces_base import is_text_generation_model
from zaya1.errors import NeuronUnavailableError
config = ModelConfig(model={str(LAYOUTS[layout])!r}, skip_tokenizer_init=True, max_model_len=64)
info, arch = ModelRegistry.inspect_model_cls(config.architectures, config)
cls, _ = ModelRegistry.resolve_model_cls(config.architectures, config)
errors = []
for call in (lambda: cls(vllm_config=None), lambda: cls.embed_input_ids(None, torch.zeros(1, dtype=torch.long))):
    try:
        call()
    except NeuronUnavailableError as exc:
        errors.append(str(exc))
result = {{"vllm": vllm.__version__, "runner": config.runner_type, "arch": arch, "cls": cls.__name__,
          "inspected_generation": info.is_text_generation_model, "generation": is_text_generation_model(cls),
          "sizes": [config.hf_text_config.num_hidden_layers, config.hf_config.num_attention_heads,
                    config.get_total_num_kv_heads(), config.get_head_size(), config.get_vocab_size()],
          "errors": errors}}
""", extra_path=str(VLLM_SITE))
    upstream = json.loads((LAYOUTS["hf"] / "config.json").read_text())
    assert out["vllm"] == "0.16.0" and out["runner"] == "generate", out
    assert out["arch"] == "ZayaForCausalLM" and out["cls"] == "ZayaForCausalLMStub"
    assert out["inspected_generation"] and out["generation"]
    assert out["sizes"] == [upstream[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                  "head_dim", "vocab_size")]
    assert len(out["errors"]) == 2 and all("vllm-neuron" in e and "\n" not in e for e in out["errors"])
