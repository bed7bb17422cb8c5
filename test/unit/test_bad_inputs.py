"""Bad inputs (issue 5): every case ends in a specific zaya1 exception that derives from the fitting builtin,
and whose one-line message names what is wrong, where (file, tensor key, argument) and how to fix it.

Fixtures are built on the fly in tmp_path from the two tiny configs in test/data/bad_inputs (the golden tiny
model's config in the original and the Hugging Face layout) with random weights; nothing under /work/shared
is read. ``python test/unit/test_bad_inputs.py`` prints the case table of docs/errors.md from
the messages the cases actually produce.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import zaya1
from zaya1 import ZayaConfig, ZayaForCausalLM, simulated_tp
from zaya1.atomic import save_state_dict_atomic
from zaya1.neuron.artifacts import (MANIFEST_NAME, ArtifactManifest, atomic_output_dir, check_manifest, check_request,
                                    compile_lock, fingerprint_checkpoint, is_complete, load_manifest)
from zaya1.checkpoint import KEY_TABLES
from zaya1.errors import (ArtifactError, CheckpointError, CheckpointNotFoundError, ConfigError, InputError,
                          ZayaError)
from zaya1.generation import Tokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
SRC = Path(zaya1.__file__).resolve().parent
BUILTIN = {ConfigError: ValueError, CheckpointError: ValueError, CheckpointNotFoundError: FileNotFoundError,
           InputError: ValueError, ArtifactError: ValueError}
VOCAB = 256  # both tiny configs
MAX_POS = 256


# ---------------------------------------------------------------------------------------------- fixtures
def write_checkpoint(dst: Path, layout: str, seed: int = 0) -> Path:
    """A tiny checkpoint in ``layout`` with random bf16 weights under the layout's own key names."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / layout / "config.json", dst / "config.json")
    cfg = ZayaConfig.from_pretrained(dst)
    with torch.device("meta"):
        model = ZayaForCausalLM(cfg)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, (target, index) in KEY_TABLES[cfg.layout](cfg).items():
        shape = params[target].shape if index is None else params[target][index].shape
        state[key] = (torch.randn(tuple(shape), generator=gen) * 0.05).to(torch.bfloat16)
    save_file(state, str(dst / "model.safetensors"))
    return dst


class Ctx:
    """What a case gets: a scratch dir, fresh checkpoint copies, the tiny model, a monkeypatch."""

    def __init__(self, tmp: Path, pristine: dict[str, Path], model, mp: pytest.MonkeyPatch):
        self.tmp, self.pristine, self.model, self.mp = tmp, pristine, model, mp
        self.ckpt = tmp / "ckpt"  # the checkpoint a case builds (named in messages)
        self.out = tmp / "out"  # compiled-artifact directory
        self.pid = os.getpid()

    def checkpoint(self, layout: str = "hf", name: str = "ckpt") -> Path:
        dst = self.tmp / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.pristine[layout], dst)
        return dst

    def with_config(self, layout: str = "hf", drop: tuple = (), **changes) -> Path:
        path = self.checkpoint(layout)
        raw = json.loads((path / "config.json").read_text())
        for name in drop:
            raw.pop(name)
        raw.update(changes)
        (path / "config.json").write_text(json.dumps(raw))
        return path

    def with_weights(self, edit: Callable[[dict], None], layout: str = "hf") -> Path:
        path = self.checkpoint(layout)
        state = load_file(path / "model.safetensors")
        edit(state)
        save_file(state, str(path / "model.safetensors"))
        return path

    def manifest(self, **changes) -> ArtifactManifest:
        fields = dict(tp_degree=2, batch_size=4, seq_len=1024, max_context_length=512, buckets=[128, 256, 512],
                      dtype="bfloat16", checkpoint_fingerprint=fingerprint_checkpoint(self.pristine["hf"]),
                      neuron_versions={"neuronx-cc": "2.21.0"})
        fields.update(changes)
        return ArtifactManifest(**fields)

    def fmt(self, text: str) -> str:
        return text.format(ckpt=self.ckpt, out=self.out, tmp=self.tmp, pid=self.pid)


def load(path, **kwargs):
    return ZayaForCausalLM.from_pretrained(path, **kwargs)


IDS = torch.tensor([[3, 4, 5]])


@dataclass
class Case:
    id: str
    run: Callable[[Ctx], object]
    exc: type
    fragments: tuple[str, ...]
    what: str


CASES: list[Case] = []


def case(case_id: str, exc: type, *fragments: str, what: str):
    def register(fn):
        CASES.append(Case(case_id, fn, exc, fragments, what))
        return fn
    return register


# ---------------------------------------------------------------------------------------------- checkpoint dir
@case("checkpoint_dir_missing", CheckpointNotFoundError, "{tmp}/nope", "does not exist", "config.json",
      what="checkpoint directory does not exist")
def _(c):
    load(c.tmp / "nope")


@case("checkpoint_path_is_a_file", CheckpointNotFoundError, "{ckpt}/model.safetensors", "is a file", "{ckpt}",
      what="a file passed where the checkpoint directory is expected")
def _(c):
    load(c.checkpoint() / "model.safetensors")


@case("config_missing", CheckpointNotFoundError, "{ckpt}/config.json", "is missing",
      what="config.json missing")
def _(c):
    (c.checkpoint() / "config.json").unlink()
    load(c.ckpt)


@case("config_not_json", ConfigError, "{ckpt}/config.json", "not valid JSON", "Restore",
      what="config.json is not JSON")
def _(c):
    (c.checkpoint() / "config.json").write_text('{"vocab_size": 256,')
    load(c.ckpt)


@case("config_not_an_object", ConfigError, "{ckpt}/config.json", "JSON object", "list",
      what="config.json holds a list, not an object")
def _(c):
    (c.checkpoint() / "config.json").write_text("[1, 2]")
    load(c.ckpt)


@case("config_not_zaya1", ConfigError, "{ckpt}/config.json", "neither the original", "Hugging Face layout",
      what="config.json of another model family")
def _(c):
    (c.checkpoint() / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    load(c.ckpt)


@case("config_required_field_missing_hf", ConfigError, "{ckpt}/config.json", "['hidden_size']", "missing",
      what="required field missing (hf layout)")
def _(c):
    load(c.with_config("hf", drop=("hidden_size",)))


@case("config_required_field_missing_original", ConfigError, "{ckpt}/config.json", "['vocab_size']", "missing",
      what="required field missing (original layout)")
def _(c):
    load(c.with_config("original", drop=("vocab_size",)))


@case("config_top_k_not_1_hf", ConfigError, "{ckpt}/config.json", "num_experts_per_tok=2", "top-1", "Set it to 1",
      what="top-k routing != 1 (hf layout)")
def _(c):
    load(c.with_config("hf", num_experts_per_tok=2))


@case("config_top_k_not_1_original", ConfigError, "{ckpt}/config.json", "moe_router_topk=2", "top-1",
      what="top-k routing != 1 (original layout)")
def _(c):
    load(c.with_config("original", moe_router_topk=2))


@case("config_unknown_layer_type", ConfigError, "{ckpt}/config.json", "'mamba'", "layer_types", "hybrid_sliding",
      what="unknown layer type")
def _(c):
    load(c.with_config("hf", layer_types=["hybrid", "mamba"]))


@case("config_heads_indivisible", ConfigError, "{ckpt}/config.json", "num_attention_heads=3",
      "num_key_value_heads=2", what="query heads not a multiple of KV heads")
def _(c):
    load(c.with_config("hf", num_attention_heads=3, num_key_value_heads=2))


@case("config_non_positive_size", ConfigError, "{ckpt}/config.json", "hidden_size=-1", "positive integer",
      what="non-positive size")
def _(c):
    load(c.with_config("hf", hidden_size=-1))


@case("config_zero_experts_original", ConfigError, "{ckpt}/config.json", "num_experts=0", "zaya_layers",
      what="zero experts (original layout names the source field)")
def _(c):
    load(c.with_config("original", zaya_layers=["a", 0, "a", 0]))


@case("config_zero_heads_without_head_dim", ConfigError, "{ckpt}/config.json", "num_attention_heads=0",
      "head_dim", what="zero heads where head_dim = hidden_size / heads (was ZeroDivisionError)")
def _(c):
    load(c.with_config("hf", drop=("head_dim",), num_attention_heads=0))


@case("config_wrong_type", ConfigError, "{ckpt}/config.json", "rms_norm_eps='tiny'", "number",
      what="a field of the wrong type (was a bare ValueError)")
def _(c):
    load(c.with_config("hf", rms_norm_eps="tiny"))


@case("config_legacy_odd_half_layers", ConfigError, "{ckpt}/config.json", "num_hidden_layers=3", "even",
      "zaya_layers", what="scalar original-layout config (legacy-8B json) with an odd half-layer count")
def _(c):
    load(c.with_config("original", drop=("zaya_layers",), num_hidden_layers=3, num_experts=4))


@case("config_quantization_method", ConfigError, "{ckpt}/config.json", "quant_method='gptq'", "compressed-tensors",
      what="a quantization method other than compressed-tensors")
def _(c):
    load(c.with_config("hf", quantization_config={"quant_method": "gptq", "bits": 4}))


@case("config_quantization_format", ConfigError, "{ckpt}/config.json", "format='nvfp4-pack-quantized'", "mxfp4",
      what="a compressed-tensors format zaya1 does not dequantize (here nvfp4)")
def _(c):
    load(c.with_config("hf", quantization_config={
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "config_groups": {"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                                               "group_size": 16, "symmetric": True, "dynamic": False}}}}))


@case("config_per_layer_list_length", ConfigError, "{ckpt}/config.json", "cca_num_q_heads", "2 entries",
      "zaya_layers has 4", what="per-half-layer list of the wrong length (original layout)")
def _(c):
    load(c.with_config("original", cca_num_q_heads=[1, 0]))


@case("config_sliding_without_window", ConfigError, "{ckpt}/config.json", "sliding_window",
      what="sliding layers without sliding_window")
def _(c):
    load(c.with_config("hf", layer_types=["hybrid", "hybrid_sliding"]))


@case("config_bad_token_id", ConfigError, "{ckpt}/config.json", "eos_token_id", "token id",
      what="eos_token_id that is not a token id")
def _(c):
    load(c.with_config("hf", eos_token_id="</s>"))


@case("config_unknown_override", ConfigError, "unknown config override argument", "['rope_scale']",
      what="unknown config override argument")
def _(c):
    load(c.checkpoint(), rope_scale=2.0)


@case("tp_degree_not_divisor", ConfigError, "tp_degree=3", "query heads",
      what="tp_degree that does not divide the heads")
def _(c):
    simulated_tp.from_pretrained(c.checkpoint(), tp_degree=3)


# ---------------------------------------------------------------------------------------------- weight files
@case("safetensors_truncated", CheckpointError, "{ckpt}/model.safetensors", "truncated", "download it again",
      what="safetensors file truncated")
def _(c):
    file = c.checkpoint() / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    load(c.ckpt)


@case("safetensors_corrupt_header", CheckpointError, "{ckpt}/model.safetensors", "corrupt", "header",
      what="safetensors header corrupt")
def _(c):
    file = c.checkpoint() / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:24] = b"#" * 16
    file.write_bytes(bytes(data))
    load(c.ckpt)


def _shard(c: Ctx, keep_second: bool = True) -> dict:
    path = c.checkpoint()
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(state)
    first, second = keys[::2], keys[1::2]
    save_file({k: state[k] for k in first}, str(path / "model-00001-of-00002.safetensors"))
    if keep_second:
        save_file({k: state[k] for k in second}, str(path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in second}
    return weight_map


def _write_index(c: Ctx, index) -> None:
    (c.ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


@case("index_names_missing_shard", CheckpointNotFoundError, "{ckpt}/model.safetensors.index.json",
      "model-00002-of-00002.safetensors", "Download the missing shard", what="index.json names a missing shard")
def _(c):
    _write_index(c, {"weight_map": _shard(c, keep_second=False)})
    load(c.ckpt)


@case("index_not_valid", CheckpointError, "{ckpt}/model.safetensors.index.json", "weight_map",
      what="index.json without a weight_map")
def _(c):
    _shard(c)
    _write_index(c, {"metadata": {}})
    load(c.ckpt)


@case("index_maps_key_to_wrong_shard", CheckpointError, "{ckpt}/model.safetensors.index.json",
      "'model.norm.weight'", "model-00002-of-00002.safetensors", "does not hold it",
      what="index.json maps a tensor to a shard that lacks it (was a bare SafetensorError)")
def _(c):
    weight_map = _shard(c)
    weight_map["model.norm.weight"] = ("model-00002-of-00002.safetensors"
                                       if weight_map["model.norm.weight"].startswith("model-00001")
                                       else "model-00001-of-00002.safetensors")
    _write_index(c, {"weight_map": weight_map})
    load(c.ckpt)


@case("index_names_file_outside_dir", CheckpointError, "{ckpt}/model.safetensors.index.json", "../other",
      "inside {ckpt}", what="index.json names a file outside the checkpoint directory")
def _(c):
    weight_map = _shard(c)
    weight_map["model.norm.weight"] = "../other/model.safetensors"
    _write_index(c, {"weight_map": weight_map})
    load(c.ckpt)


@case("missing_key", CheckpointError, "{ckpt}", "missing 1 tensor(s)", "model.norm.weight",
      "config.json belongs to these weights", what="tensor missing")
def _(c):
    load(c.with_weights(lambda s: s.pop("model.norm.weight")))


@case("missing_key_original", CheckpointError, "{ckpt}", "missing 1 tensor(s)",
      "model.layers.3.zaya_block.experts.local_experts.2.linear_fc2.weight",
      what="tensor missing (original layout, named by its original key)")
def _(c):
    load(c.with_weights(lambda s: s.pop("model.layers.3.zaya_block.experts.local_experts.2.linear_fc2.weight"),
                        layout="original"))


@case("unexpected_key", CheckpointError, "{ckpt}", "unexpected 1 tensor(s)", "model.extra_head.weight",
      what="unexpected tensor")
def _(c):
    load(c.with_weights(lambda s: s.__setitem__("model.extra_head.weight", torch.zeros(4))))


@case("mis_shaped_tensor", CheckpointError, "{ckpt}/model.safetensors", "'model.layers.1.self_attn.o_proj.weight'",
      "[256, 64]", "[256, 128]", what="tensor of the wrong shape")
def _(c):
    load(c.with_weights(lambda s: s.__setitem__("model.layers.1.self_attn.o_proj.weight", torch.zeros(256, 64))))


@case("int8_tensor", CheckpointError, "{ckpt}/model.safetensors", "'model.norm.weight'", "I8",
      "float32, bfloat16, float16", what="unsupported tensor dtype (int8)")
def _(c):
    load(c.with_weights(lambda s: s.__setitem__("model.norm.weight", torch.ones(256, dtype=torch.int8))))


@case("dtype_argument_string", CheckpointError, "dtype='int8'", "torch.bfloat16",
      what="unsupported dtype= argument (string)")
def _(c):
    load(c.checkpoint(), dtype="int8")


@case("dtype_argument_torch", CheckpointError, "dtype=torch.int8", "torch.float32",
      what="unsupported dtype= argument (torch.dtype)")
def _(c):
    load(c.checkpoint(), dtype=torch.int8)


@case("layouts_mixed_in_shards", CheckpointError, "{ckpt}", "hf layout", "other layout",
      "model.layers.0.input_norm.weight", "mixed", what="both layouts mixed in one checkpoint (shards)")
def _(c):
    path = c.checkpoint("hf")
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    shutil.copy(c.pristine["original"] / "model.safetensors", path / "model-00002-of-00002.safetensors")
    load(path)


@case("layouts_mixed_config_vs_weights", CheckpointError, "{ckpt}", "original layout", "other layout",
      what="original-layout config.json with hf-layout weights")
def _(c):
    path = c.checkpoint("hf")
    shutil.copy(c.pristine["original"] / "config.json", path / "config.json")
    load(path)


@case("nan_in_weights", CheckpointError, "{ckpt}/model.safetensors", "'model.norm.weight'", "NaN or inf",
      what="NaN in weights (check_finite=True)")
def _(c):
    def poison(state):
        state["model.norm.weight"][7] = float("nan")
    load(c.with_weights(poison), check_finite=True)


@case("inf_in_weights", CheckpointError, "{ckpt}/model.safetensors", "'model.layers.0.mlp.experts.down_proj'",
      "NaN or inf", what="inf in weights (check_finite=True)")
def _(c):
    def poison(state):
        state["model.layers.0.mlp.experts.down_proj"][1, 2, 3] = float("inf")
    load(c.with_weights(poison), check_finite=True)


@case("pickle_only_checkpoint", CheckpointNotFoundError, "{ckpt}", "pytorch_model.bin", "never loaded",
      "safetensors", what="only pytorch_model.bin (pickle) present: never unpickled")
def _(c):
    path = c.checkpoint()
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    load(path)


@case("tokenizer_missing", CheckpointNotFoundError, "{ckpt}", "tokenizer.json", "--prompt-ids",
      what="tokenizer files missing")
def _(c):
    Tokenizer.from_pretrained(c.checkpoint())


@case("tokenizer_corrupt", CheckpointError, "{ckpt}", "tokenizer.json", "cannot be loaded",
      what="tokenizer.json corrupt (was a bare JSONDecodeError)")
def _(c):
    (c.checkpoint() / "tokenizer.json").write_text('{"version": ')
    Tokenizer.from_pretrained(c.ckpt)


# ---------------------------------------------------------------------------------------------- generation
@case("prompt_longer_than_max_context", InputError, "300 tokens", "max_position_embeddings=256", "Truncate",
      what="prompt longer than the maximum sequence length")
def _(c):
    c.model.generate(torch.randint(0, VOCAB, (1, 300)), max_new_tokens=4)


@case("prompt_plus_new_tokens_beyond_max_position", InputError, "max_new_tokens (10)", "= 260",
      "max_position_embeddings=256", "at most 6", what="prompt + max_new_tokens beyond max_position_embeddings")
def _(c):
    c.model.generate(torch.randint(0, VOCAB, (1, 250)), max_new_tokens=10)


@case("prompt_plus_new_tokens_beyond_seq_len", InputError, "= 13", "max_seq_len=8", "at most 5",
      what="prompt + max_new_tokens beyond max_seq_len")
def _(c):
    c.model.generate(IDS, max_new_tokens=10, max_seq_len=8)


@case("empty_prompt", InputError, "input_ids", "[1, 0]", "seq >= 1", what="empty prompt")
def _(c):
    c.model.generate(torch.zeros(1, 0, dtype=torch.long))


@case("empty_prompt_by_mask", InputError, "prompt(s) [1]", "attention_mask is all zeros",
      what="empty prompt in a batch (attention_mask row all zeros)")
def _(c):
    c.model.generate(torch.tensor([[3, 4], [5, 6]]), attention_mask=torch.tensor([[1, 1], [0, 0]]))


@case("token_id_negative", InputError, "input_ids", "[-1]", "[0, 256)", what="token id < 0")
def _(c):
    c.model.generate(torch.tensor([[3, -1, 5]]))


@case("token_id_beyond_vocab", InputError, "input_ids", "[256]", "[0, 256)", "tokenizer",
      what="token id >= vocab_size")
def _(c):
    c.model.generate(torch.tensor([[3, 256]]))


@case("token_id_beyond_vocab_forward", InputError, "input_ids", "[1000]", what="token id >= vocab_size (forward)")
def _(c):
    c.model(torch.tensor([[1000]]))


@case("token_ids_not_integers", InputError, "input_ids", "integer tensor", "torch.float32",
      what="input_ids of floats")
def _(c):
    c.model.generate(torch.tensor([[3.0, 4.0]]))


@case("token_ids_not_a_tensor", InputError, "input_ids", "got list", what="input_ids as a Python list")
def _(c):
    c.model.generate([[3, 4]])


@case("attention_mask_shape_forward", InputError, "attention_mask shape [1, 2]", "[1, 3]",
      what="attention_mask shape differs from input_ids (forward; was a torch shape error)")
def _(c):
    c.model(IDS, attention_mask=torch.ones(1, 2, dtype=torch.long))


@case("max_new_tokens_zero", InputError, "max_new_tokens=0", "positive integer", what="max_new_tokens = 0")
def _(c):
    c.model.generate(IDS, max_new_tokens=0)


@case("max_new_tokens_negative", InputError, "max_new_tokens=-5", "positive integer", what="max_new_tokens < 0")
def _(c):
    c.model.generate(IDS, max_new_tokens=-5)


@case("temperature_negative", InputError, "temperature=-0.5", "> 0", "do_sample=False", what="temperature < 0")
def _(c):
    c.model.generate(IDS, do_sample=True, temperature=-0.5)


@case("temperature_nan", InputError, "temperature=nan", "finite", what="temperature NaN (was a torch error)")
def _(c):
    c.model.generate(IDS, do_sample=True, temperature=float("nan"))


@case("top_p_zero", InputError, "top_p=0.0", "(0, 1]", what="top_p = 0")
def _(c):
    c.model.generate(IDS, do_sample=True, top_p=0.0)


@case("top_p_above_one", InputError, "top_p=1.5", "(0, 1]", what="top_p > 1")
def _(c):
    c.model.generate(IDS, do_sample=True, top_p=1.5)


@case("top_k_negative", InputError, "top_k=-1", ">= 0", what="top_k < 0")
def _(c):
    c.model.generate(IDS, do_sample=True, top_k=-1)


# ---------------------------------------------------------------------------------------------- compiled artifacts
@case("batch_larger_than_compiled", InputError, "batch of 8", "batch_size=4", "--batch-size 8",
      what="batch larger than the compiled batch")
def _(c):
    check_request(c.manifest(), 8, [10] * 8, 16)


@case("prompt_longer_than_largest_bucket", InputError, "prompt 1", "600 tokens", "bucket 512",
      "max_context_length=512", "--max-context-length 600", what="prompt longer than the largest context bucket")
def _(c):
    check_request(c.manifest(), 2, [10, 600], 16)


@case("prompt_plus_new_tokens_beyond_compiled_seq_len", InputError, "= 1100", "seq_len=1024", "at most 524",
      "--seq-len 1100", what="prompt + max_new_tokens beyond the compiled seq_len")
def _(c):
    check_request(c.manifest(), 1, [500], 600)


@case("request_empty_prompt", InputError, "prompt 1", "at least one token",
      what="empty prompt in a request to compiled artifacts")
def _(c):
    check_request(c.manifest(), 2, [5, 0], 16)


def _mismatch(case_id, field, compiled, requested, *fragments, what=None):
    @case(case_id, ArtifactError, "{out}", *fragments, what=what or f"artifacts compiled for another {field}")
    def _(c):
        check_manifest(c.manifest(**{field: compiled}), c.manifest(**{field: requested}), artifacts_dir=c.out)


_mismatch("artifacts_other_tp_degree", "tp_degree", 2, 4, "compiled for tp_degree=2, requested 4",
          "--tp-degree 4", "tp_degree=2")
_mismatch("artifacts_other_batch_size", "batch_size", 4, 8, "compiled for batch_size=4, requested 8",
          "--batch-size 8")
_mismatch("artifacts_other_seq_len", "seq_len", 1024, 2048, "compiled for seq_len=1024, requested 2048",
          "--seq-len 2048")
_mismatch("artifacts_other_dtype", "dtype", "bfloat16", "float32", "compiled for dtype=bfloat16, requested float32",
          "--dtype float32")
_mismatch("artifacts_other_neuron_sdk", "neuron_versions", {"neuronx-cc": "2.21.0"}, {"neuronx-cc": "2.22.1"},
          "compiled with neuronx-cc 2.21.0, installed 2.22.1", "recompile",
          what="artifacts compiled with another Neuron SDK version")


@case("artifacts_other_checkpoint", ArtifactError, "{out}", "another checkpoint", "--model",
      what="artifacts compiled from another checkpoint")
def _(c):
    other = fingerprint_checkpoint(c.pristine["original"])
    check_manifest(c.manifest(checkpoint_fingerprint=other), c.manifest(), artifacts_dir=c.out)


@case("artifacts_several_fields_differ", ArtifactError, "tp_degree=2, requested 8", "batch_size=4, requested 1",
      "seq_len=1024, requested 4096", "--tp-degree 8 --batch-size 1 --seq-len 4096",
      what="several settings differ: all are listed")
def _(c):
    check_manifest(c.manifest(), dict(tp_degree=8, batch_size=1, seq_len=4096), artifacts_dir=c.out)


@case("artifacts_interrupted_compile", ArtifactError, "{out}", MANIFEST_NAME, "interrupted", "Delete it",
      what="artifact directory without the completion marker (interrupted compile)")
def _(c):
    c.out.mkdir()
    (c.out / "model.pt").write_bytes(b"half a graph")
    load_manifest(c.out)


@case("artifacts_only_partial_left", ArtifactError, "{out}", "out.partial-4242", "interrupted",
      what="only a killed compile's .partial directory exists")
def _(c):
    (c.tmp / "out.partial-4242").mkdir()
    load_manifest(c.out)


@case("artifacts_missing", ArtifactError, "no compiled artifacts at {out}", "--compiled-model-path {out}",
      what="artifact directory does not exist")
def _(c):
    load_manifest(c.out)


@case("artifacts_manifest_corrupt", ArtifactError, "{out}/" + MANIFEST_NAME, "not a valid zaya1 manifest",
      "recompile", what="manifest file corrupt")
def _(c):
    c.out.mkdir()
    (c.out / MANIFEST_NAME).write_text('{"tp_degree": 2')
    load_manifest(c.out)


@case("concurrent_compile", ArtifactError, "another compile (pid {pid})", "{out}", "{out}.lock",
      what="two compiles into one directory at once (lock)")
def _(c):
    with atomic_output_dir(c.out, c.manifest()):
        with atomic_output_dir(c.out, c.manifest()):
            pass


@case("output_parent_is_a_file", ArtifactError, "{tmp}/file/out", "{tmp}/file is a file",
      what="output directory not writable (its parent is a regular file)")
def _(c):
    (c.tmp / "file").write_text("")
    with atomic_output_dir(c.tmp / "file" / "out", c.manifest()):
        raise AssertionError("the body must not run")


@case("output_dir_not_writable", ArtifactError, "{tmp}/ro/out", "{tmp}/ro", "not a writable directory",
      "Permission denied", what="output directory not writable (permissions)")
def _(c):
    ro = c.tmp / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores mode bits: make the file system refuse as it would for a user
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)
        c.mp.setattr(os, "open", refuse)
    else:
        ro.chmod(0o500)
    try:
        with atomic_output_dir(ro / "out", c.manifest()):
            raise AssertionError("the body must not run")
    finally:
        ro.chmod(0o700)


@case("output_dir_not_a_zaya1_compile", ArtifactError, "{out}", "not a zaya1 compile", "will not be replaced",
      what="output directory exists with foreign files (never replaced)")
def _(c):
    c.out.mkdir()
    (c.out / "notes.txt").write_text("mine")
    with atomic_output_dir(c.out, c.manifest()):
        raise AssertionError("the body must not run")


@case("write_fails_midway", ArtifactError, "{tmp}/w.safetensors", "failed midway", "No space left",
      what="a weights write failing midway (nothing is left that looks complete)")
def _(c):
    import zaya1.atomic

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    c.mp.setattr(zaya1.atomic, "save_file", half_then_fail)
    save_state_dict_atomic({"w": torch.zeros(4)}, c.tmp / "w.safetensors")


@case("manifest_invalid_settings", ConfigError, "max_context_length=2048", "seq_len=1024",
      what="compile settings that cannot work (context longer than the sequence)")
def _(c):
    c.manifest(max_context_length=2048)


@case("manifest_bucket_beyond_context", ConfigError, "buckets=[512, 1024]", "max_context_length=512",
      what="a context bucket larger than max_context_length")
def _(c):
    c.manifest(buckets=[512, 1024])


# ---------------------------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {layout: write_checkpoint(root / layout, layout) for layout in ("hf", "original")}


@pytest.fixture(scope="module")
def tiny_model(pristine):
    return load(pristine["hf"])


@pytest.fixture
def ctx(tmp_path, pristine, tiny_model, monkeypatch):
    return Ctx(tmp_path, pristine, tiny_model, monkeypatch)


def test_enough_cases():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad: Case, ctx: Ctx):
    with pytest.raises(ZayaError) as info:
        bad.run(ctx)
    err = info.value
    assert type(err) is bad.exc, f"{type(err).__name__}: {err}"
    assert isinstance(err, BUILTIN[bad.exc])
    message = str(err)
    assert "\n" not in message and len(message) < 700, message
    for fragment in bad.fragments:
        assert ctx.fmt(fragment) in message, f"{ctx.fmt(fragment)!r} not in {message!r}"


def test_error_classes_derive_from_builtins():
    from zaya1.errors import NeuronUnavailableError

    for cls, builtin in BUILTIN.items():
        assert issubclass(cls, builtin) and issubclass(cls, ZayaError)
    assert issubclass(NeuronUnavailableError, ImportError)


# ---------------------------------------------------------------------------------------------- no code runs
def test_pickle_is_never_loaded(ctx):
    """A pytorch_model.bin whose unpickling would run code: loading refuses it and the code never runs."""
    sentinel = ctx.tmp / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    path = ctx.checkpoint()
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointNotFoundError, match="pytorch_model.bin"):
        load(path)
    with pytest.raises(CheckpointNotFoundError):
        fingerprint_checkpoint(path)
    assert not sentinel.exists()


def test_remote_code_is_never_run(ctx):
    """config.json / tokenizer_config.json with auto_map pointing at a .py file in the checkpoint: the model and
    the tokenizer load without importing it."""
    from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers

    sentinel = ctx.tmp / "pwned"
    path = ctx.checkpoint()
    (path / "evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nclass Evil: pass\n")
    raw = json.loads((path / "config.json").read_text())
    raw["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    (path / "config.json").write_text(json.dumps(raw))
    tok = RawTokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Evil", None]}}))
    model = load(path)
    tokenizer = Tokenizer.from_pretrained(path)
    assert model.config.vocab_size == VOCAB and tokenizer.backend is not None
    assert not sentinel.exists()


def test_source_has_no_code_execution_paths():
    """No trust_remote_code=True, unpickling torch.load, pickle, eval or exec anywhere in the library."""
    import re

    banned = [r"trust_remote_code\s*=\s*True", r"torch\.load\((?![^)]*weights_only\s*=\s*True)", r"\bimport pickle\b", r"\bpickle\.load",
              r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"weights_only\s*=\s*False"]
    for file in sorted(SRC.rglob("*.py")):
        text = file.read_text(encoding="utf-8")
        for pattern in banned:
            assert not re.search(pattern, text), f"{file.name} matches {pattern!r}"
    assert "trust_remote_code=False" in (SRC / "tokenizer.py").read_text()


# ---------------------------------------------------------------------------------------------- artifacts
def _complete_dir(ctx, marker: str = "v1") -> ArtifactManifest:
    manifest = ctx.manifest()
    with atomic_output_dir(ctx.out, manifest) as tmp:
        assert tmp == ctx.out.absolute().with_name(f"out.partial-{os.getpid()}")
        (tmp / "model.pt").write_text(marker)
    return manifest


def _siblings(ctx) -> list[str]:
    return sorted(p.name for p in ctx.out.absolute().parent.iterdir() if p.name.startswith("out"))


def test_atomic_dir_success(ctx):
    manifest = _complete_dir(ctx)
    assert _siblings(ctx) == ["out"]  # no .partial, no .lock
    assert is_complete(ctx.out) and (ctx.out / "model.pt").read_text() == "v1"
    loaded = load_manifest(ctx.out)
    assert loaded == manifest and loaded.zaya1_version == zaya1.__version__
    check_manifest(loaded, manifest, artifacts_dir=ctx.out)
    check_request(loaded, 4, [1, 512, 100, 3], 512)


def test_atomic_dir_replaces_previous_only_on_success(ctx):
    _complete_dir(ctx, "v1")
    manifest = ctx.manifest(batch_size=8)
    with atomic_output_dir(ctx.out, manifest) as tmp:
        (tmp / "model.pt").write_text("v2")
        assert (ctx.out / "model.pt").read_text() == "v1"  # the old compile stays usable meanwhile
        manifest.neuron_versions["torch-neuronx"] = "2.9.0"  # the body may complete the manifest
    assert (ctx.out / "model.pt").read_text() == "v2"
    assert load_manifest(ctx.out).neuron_versions["torch-neuronx"] == "2.9.0"
    assert _siblings(ctx) == ["out"]


def test_atomic_dir_failure_in_body_keeps_previous(ctx):
    _complete_dir(ctx, "v1")
    with pytest.raises(RuntimeError, match="compiler crashed") as info:
        with atomic_output_dir(ctx.out, ctx.manifest(batch_size=8)) as tmp:
            (tmp / "model.pt").write_text("half")
            raise RuntimeError("compiler crashed")
    if sys.version_info >= (3, 11):
        assert any("partial output was removed" in note for note in info.value.__notes__)
    assert _siblings(ctx) == ["out"]
    assert (ctx.out / "model.pt").read_text() == "v1" and load_manifest(ctx.out).batch_size == 4


def test_atomic_dir_failure_without_previous_leaves_nothing(ctx):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(ctx.out, ctx.manifest()) as tmp:
            (tmp / "model.pt").write_text("half")
            raise KeyboardInterrupt
    assert _siblings(ctx) == []
    with pytest.raises(ArtifactError, match="no compiled artifacts"):
        load_manifest(ctx.out)


def test_atomic_dir_manifest_write_fails_midway(ctx, monkeypatch):
    """The completion marker's own write fails halfway (disk full): nothing complete-looking is left."""
    import zaya1.neuron.artifacts as artifacts

    _complete_dir(ctx, "v1")

    def half_manifest(directory, manifest):
        (directory / MANIFEST_NAME).write_text('{"tp_degree": ')
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifacts, "_write_manifest", half_manifest)
    with pytest.raises(ArtifactError, match="No space left on device") as info:
        with atomic_output_dir(ctx.out, ctx.manifest(batch_size=8)) as tmp:
            (tmp / "model.pt").write_text("v2")
    assert str(ctx.out) in str(info.value)
    assert _siblings(ctx) == ["out"]
    assert (ctx.out / "model.pt").read_text() == "v1" and load_manifest(ctx.out).batch_size == 4


def test_atomic_dir_rename_fails_restores_previous(ctx, monkeypatch):
    import zaya1.neuron.artifacts as artifacts

    _complete_dir(ctx, "v1")
    real_rename = os.rename

    def rename(src, dst):
        if ".partial-" in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)
    monkeypatch.setattr(artifacts.os, "rename", rename)
    with pytest.raises(ArtifactError, match="cross-device"):
        with atomic_output_dir(ctx.out, ctx.manifest(batch_size=8)) as tmp:
            (tmp / "model.pt").write_text("v2")
    monkeypatch.undo()
    assert _siblings(ctx) == ["out"]
    assert (ctx.out / "model.pt").read_text() == "v1" and load_manifest(ctx.out).batch_size == 4


def test_atomic_dir_cleans_leftovers_of_killed_compiles(ctx):
    (ctx.tmp / "out.partial-4242").mkdir()
    (ctx.tmp / "out.partial-4242" / "model.pt").write_text("half")
    _complete_dir(ctx)
    assert _siblings(ctx) == ["out"]


def test_atomic_dir_restores_previous_after_crash_between_renames(ctx):
    _complete_dir(ctx, "v1")
    (ctx.tmp / "out").rename(ctx.tmp / "out.old-4242")  # a compile died after moving the old one aside
    with pytest.raises(RuntimeError):
        with atomic_output_dir(ctx.out, ctx.manifest()):
            raise RuntimeError("compiler crashed")
    assert (ctx.out / "model.pt").read_text() == "v1" and _siblings(ctx) == ["out"]


def test_unwritable_output_is_detected_before_the_body(ctx):
    (ctx.tmp / "file").write_text("")
    ran = []
    with pytest.raises(ArtifactError, match="is a file, not a directory"):
        with atomic_output_dir(ctx.tmp / "file" / "out", ctx.manifest()):
            ran.append(True)
    with pytest.raises(ArtifactError, match="is a file, not a directory"):
        save_state_dict_atomic({"w": torch.zeros(2)}, ctx.tmp / "file" / "w.safetensors")
    assert not ran


def _try_unwritable(ro: Path, manifest: ArtifactManifest) -> str:
    try:
        with atomic_output_dir(ro / "out", manifest):
            return "the body ran"
    except ArtifactError as exc:
        return str(exc)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_unwritable_output_by_permissions(ctx):
    """A real read-only (mode 0o555) parent. Root ignores mode bits, so as root the attempt runs in a forked
    child that drops to the 'nobody' user first."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="zaya1-ro-"))
    try:
        ro = root / "ro"
        ro.mkdir()
        root.chmod(0o755)
        ro.chmod(0o555)
        if os.geteuid() != 0:
            message = _try_unwritable(ro, ctx.manifest())
        else:
            read, write = os.pipe()
            manifest = ctx.manifest()
            pid = os.fork()
            if pid == 0:  # child: never return into pytest
                try:
                    os.close(read)
                    os.setgid(65534)
                    os.setuid(65534)
                    os.write(write, _try_unwritable(ro, manifest).encode())
                finally:
                    os._exit(0)
            os.close(write)
            with os.fdopen(read) as pipe:
                message = pipe.read()
            os.waitpid(pid, 0)
        assert f"{ro}/out" in message and "not a writable directory" in message, message
        assert not (ro / "out").exists() and sorted(ro.iterdir()) == []
    finally:
        root.chmod(0o700)
        (root / "ro").chmod(0o700)
        shutil.rmtree(root)


def test_save_state_dict_atomic(ctx, monkeypatch):
    import zaya1.atomic

    target = ctx.tmp / "w.safetensors"
    save_state_dict_atomic({"w": torch.arange(4.0)}, target, metadata={"format": "pt"})
    assert torch.equal(load_file(target)["w"], torch.arange(4.0))

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(zaya1.atomic, "save_file", half_then_fail)
    with pytest.raises(ArtifactError, match="previous file is untouched"):
        save_state_dict_atomic({"w": torch.zeros(4)}, target)
    assert sorted(p.name for p in ctx.tmp.iterdir()) == ["w.safetensors"]  # no temp file left
    assert torch.equal(load_file(target)["w"], torch.arange(4.0))


def _hold_lock(path: str, ready) -> None:
    with compile_lock(path):
        ready.set()
        signal.pause()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_lock_held_by_another_process(ctx):
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    ready = mp.Event()
    holder = mp.Process(target=_hold_lock, args=(str(ctx.out), ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ArtifactError, match=f"another compile \\(pid {holder.pid}\\)"):
            with atomic_output_dir(ctx.out, ctx.manifest()):
                raise AssertionError("the body must not run")
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a compile that dies: the kernel drops its lock
        holder.join()
    _complete_dir(ctx)  # the lock file it left behind does not block the next compile
    assert is_complete(ctx.out)


def test_lock_released_after_compile(ctx):
    with compile_lock(ctx.out) as lock_path:
        assert lock_path.read_text().strip() == str(os.getpid())
    assert not lock_path.exists()
    with compile_lock(ctx.out):
        pass


def test_fingerprint(ctx):
    a = fingerprint_checkpoint(ctx.pristine["hf"])
    assert a.startswith("sha256:") and a == fingerprint_checkpoint(ctx.pristine["hf"])
    assert a != fingerprint_checkpoint(ctx.pristine["original"])
    path = ctx.checkpoint()
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(raw | {"max_position_embeddings": 512}))
    assert fingerprint_checkpoint(path) != a
    # header only: the same names/shapes/dtypes with other values hash the same (no full read of the data)
    path = ctx.checkpoint()
    file = path / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-64:] = bytes(64)
    file.write_bytes(bytes(data))
    assert fingerprint_checkpoint(path) == a
    # a tensor of another shape changes the header
    path = ctx.with_weights(lambda s: s.__setitem__("model.norm.weight", torch.zeros(255)))
    assert fingerprint_checkpoint(path) != a


def test_manifest_round_trip_and_for_checkpoint(ctx):
    manifest = ArtifactManifest.for_checkpoint(ctx.pristine["hf"], tp_degree=1, batch_size=2, seq_len=256,
                                               dtype=torch.bfloat16)
    assert manifest.dtype == "bfloat16" and manifest.buckets == [256] and manifest.max_context_length == 256
    assert manifest.token_generation_buckets == [256]
    assert manifest.checkpoint_fingerprint == fingerprint_checkpoint(ctx.pristine["hf"])
    assert ArtifactManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    check_manifest(manifest, dict(tp_degree=1, dtype="bf16"))


# ---------------------------------------------------------------------------------------------- docs table
def markdown_table() -> str:
    """The "What can go wrong" table, from the messages the cases raise now."""
    import tempfile

    rows = ["| case | exception (builtin) | message |", "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        pristine = {layout: write_checkpoint(root / "pristine" / layout, layout) for layout in ("hf", "original")}
        model = load(pristine["hf"])
        for i, bad in enumerate(CASES):
            tmp = root / f"c{i}"
            tmp.mkdir()
            with pytest.MonkeyPatch.context() as mp:
                c = Ctx(tmp, pristine, model, mp)
                try:
                    bad.run(c)
                    message, name = "(no error)", "-"
                except ZayaError as exc:
                    message, name = str(exc), f"`{type(exc).__name__}` ({BUILTIN[type(exc)].__name__})"
            message = (message.replace(str(tmp / "ckpt"), "<checkpoint>").replace(str(tmp / "out"), "<out>")
                       .replace(str(tmp), "<dir>").replace(f"pid {os.getpid()}", "pid <pid>").replace("|", "\\|"))
            rows.append(f"| {bad.what} | {name} | {message} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
