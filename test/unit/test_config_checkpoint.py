"""Config parsing (both layouts), checkpoint loading (tied / untied heads, shards, dtypes) and the loader's
peak memory."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zaya1
from zaya_testlib import GOLDEN_DIR, GOLDEN_SETS, TINY_CONFIGS, TOL, max_diff, upstream, write_large_checkpoint

pytestmark = pytest.mark.usefixtures("inference")

SRC = Path(zaya1.__file__).resolve().parents[1]
LAYOUT_DEPENDENT = {"layout", "router_norm_eps", "skip_expert_output"}


def assert_matches_upstream_config(ours: zaya1.ZayaConfig, theirs) -> None:
    """Every canonical field against transformers' own parse of the same HF-layout config.json."""
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "num_experts", "moe_intermediate_size", "router_hidden_size", "cca_time0",
                 "cca_time1", "rms_norm_eps", "sliding_window", "max_position_embeddings", "tie_word_embeddings",
                 "pad_token_id", "bos_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    eos = theirs.eos_token_id
    assert ours.eos_token_id == ([eos] if isinstance(eos, int) else list(eos))
    assert ours.layer_types == [{"hybrid": "full", "hybrid_sliding": "sliding"}[t] for t in theirs.layer_types]
    rope = theirs.rope_parameters
    assert ours.rope_theta == rope["hybrid"]["rope_theta"]
    assert ours.partial_rotary_factor == rope["hybrid"]["partial_rotary_factor"]
    if "hybrid_sliding" in theirs.layer_types:
        assert ours.partial_rotary_factor_sliding == rope["hybrid_sliding"].get("partial_rotary_factor", 1.0)
    if "hybrid_sliding" in rope:
        assert ours.rope_theta_sliding == rope["hybrid_sliding"]["rope_theta"]


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", GOLDEN_SETS)
def test_golden_layouts_parse_to_the_same_config(name):
    original = zaya1.ZayaConfig.from_pretrained(GOLDEN_DIR / name).to_dict()
    hf = zaya1.ZayaConfig.from_pretrained(GOLDEN_DIR / name / "hf-layout")
    differing = {k for k in original if original[k] != hf.to_dict()[k]}
    assert differing == LAYOUT_DEPENDENT
    assert_matches_upstream_config(hf, upstream().ZayaConfig.from_pretrained(GOLDEN_DIR / name / "hf-layout"))


@pytest.mark.parametrize("name", GOLDEN_SETS)
def test_golden_layouts_load_the_same_weights(name):
    """The upstream converter only renames and stacks: both layouts must give identical canonical tensors."""
    original = zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / name).state_dict()
    hf = zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / name / "hf-layout").state_dict()
    assert original.keys() == hf.keys()
    for key in original:
        assert torch.equal(original[key], hf[key]), key


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_tiny_configs_match_upstream(tiny, name):
    m = tiny(name)
    ours = zaya1.ZayaConfig.from_pretrained(m.path)
    assert ours.layout == "hf"
    assert_matches_upstream_config(ours, m.config)
    assert zaya1.ZayaConfig.from_dict(ours.to_dict()) == ours  # our own serialisation round-trips


# ---------------------------------------------------------------------------------------------- heads
def test_tied_checkpoint_has_no_lm_head(tiny):
    m = tiny("gqa8x2")
    with safe_open(str(m.path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # transformers drops the tied copy
    assert m.ours.lm_head is None


def test_tied_checkpoint_with_an_lm_head_copy_loads(tiny, tmp_path):
    """Some exporters store the tied lm_head anyway: it is tolerated and changes nothing."""
    m = tiny("gqa8x2")
    tensors = load_file(m.path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    shutil.copy(m.path / "config.json", tmp_path)
    ids = torch.randint(3, 160, (1, 9))
    assert max_diff(zaya1.ZayaForCausalLM.from_pretrained(tmp_path)(ids).logits, m.ours(ids).logits) == 0


def test_untied_lm_head(tiny, report):
    m = tiny("gqa4x2", tie_word_embeddings=False)
    with safe_open(str(m.path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" in f.keys()
        assert not torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight"))
    assert m.ours.lm_head is not None
    ids = torch.randint(3, 160, (2, 11), generator=torch.Generator().manual_seed(2))
    assert report("gqa4x2 untied lm_head full-sequence", max_diff(m.ours(ids).logits, m.hf(ids).logits)) <= TOL


# ---------------------------------------------------------------------------------------------- shards
def shard(source: Path, target: Path, parts: int, index: bool) -> None:
    tensors = load_file(source / "model.safetensors")
    keys = sorted(tensors)
    weight_map = {}
    for p in range(parts):
        name = f"model-{p + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: tensors[k] for k in keys[p::parts]}
        save_file(chunk, target / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    if index:
        (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(source / "config.json", target)


@pytest.mark.parametrize("index", [True, False], ids=["with-index", "no-index"])
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("source", ["tiny-hf", "golden-original"])
def test_sharded_checkpoint_loads_identically(tiny, tmp_path, source, parts, index):
    path = tiny("gqa8x2").path if source == "tiny-hf" else GOLDEN_DIR / "zaya1-original-gqa"
    shard(path, tmp_path, parts, index)
    single = zaya1.ZayaForCausalLM.from_pretrained(path)
    sharded = zaya1.ZayaForCausalLM.from_pretrained(tmp_path)
    a, b = single.state_dict(), sharded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = torch.randint(3, single.config.vocab_size, (1, 7))
    assert torch.equal(single(ids).logits, sharded(ids).logits)


# ---------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bfloat16", "float16", "fp32"])
def test_dtype_loads(tiny, dtype):
    m = tiny("gqa8x2")
    model = zaya1.ZayaForCausalLM.from_pretrained(m.path, dtype=dtype)
    expected_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "fp32": torch.float32}.get(dtype, dtype)
    assert model.dtype == expected_dtype
    reference = m.ours.state_dict()
    for key, tensor in model.state_dict().items():
        if key.endswith("balancing_biases"):  # the routing choice is made in fp32 (doc P12)
            assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[key]), key
        else:
            assert tensor.dtype == expected_dtype, key
            assert torch.equal(tensor, reference[key].to(expected_dtype)), key
    logits = model(torch.randint(3, 160, (1, 9))).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_cast_keeps_balancing_biases_fp32(tiny):
    model = zaya1.ZayaForCausalLM.from_pretrained(tiny("gqa8x2").path).to(torch.bfloat16)
    assert all(layer.mlp.router.balancing_biases.dtype == torch.float32 for layer in model.model.layers)
    assert model.model.layers[0].mlp.router.down_proj.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- memory
PEAK_SCRIPT = r"""
import json, sys, torch, zaya1

def peak_rss():  # this process image's high-water mark (ru_maxrss would include the forking parent's)
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM")).split()[1])

before = peak_rss()
model = zaya1.ZayaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
print(json.dumps({"before": before, "after": peak_rss(),
                  "params": sum(t.numel() * t.element_size() for t in model.state_dict().values())}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_of_loading(tmp_path):
    """Loading a ~355 MB fp32 checkpoint grows the peak RSS by at most 1.6x the file size (one model plus
    about one tensor; reading the whole file through one memory map would make it ~2x)."""
    size = write_large_checkpoint(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["params"] >= 0.99 * size  # the loaded model really is the whole file
    ratio = (result["after"] - result["before"]) / size
    print(f"peak RSS growth while loading: {ratio:.2f} x the {size / 2**20:.0f} MiB checkpoint")
    assert ratio <= 1.6


def test_readme_states_the_defaults_of_from_pretrained():
    """The README's signature line of ``from_pretrained`` gives each keyword's real default."""
    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if "`from_pretrained(path, " in line)
    stated = dict(re.findall(r"(\w+)=([^,.)][^,)]*)", line))
    assert stated, line
    params = inspect.signature(zaya1.ZayaForCausalLM.from_pretrained).parameters
    for name, value in stated.items():
        assert repr(params[name].default) == value, (name, value)
