"""Checkpoint loading: safetensors (single file or sharded with an index) in either layout, mapped to our
canonical parameter names in one name-mapping pass, streamed tensor by tensor into preallocated weights.

The mapping is an explicit table ``checkpoint key -> (canonical key, index)`` built from the config; the
index places a tensor inside a canonical one (a stacked expert, one half of the fused value projection).
The same table is the list of expected keys, so missing and unexpected keys are reported by their names in
the checkpoint. Nothing is unpickled and no code from the checkpoint runs: only safetensors are read.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import FP8, MXFP4, ZayaConfig
from .errors import CheckpointError, CheckpointNotFoundError, InputError
from .generation_config import GenerationDefaults
from .quantization import QuantizedWeight, quantize_fp8

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_FLOAT_STORAGE = {"F64", "F32", "F16", "BF16"}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1}
# storage dtypes a destination of this dtype takes (quantized experts' codes and scales; every other weight float)
_STORAGE_OF = {torch.float8_e4m3fn: {"F8_E4M3"}, torch.uint8: {"U8"}}
_QUANTIZED_SUFFIXES = ("weight_scale", "weight_packed", "weight_zero_point", "weight_global_scale", "input_scale",
                       "weight_shape")
# the two tensors each quantized expert module stores (quantization.py): (codes, scale)
SERIALIZED = {FP8: ("weight", "weight_scale"), MXFP4: ("weight_packed", "weight_scale")}
# keys some exporters add that carry nothing we need
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def resolve_dtype(dtype: torch.dtype | str, config: ZayaConfig | None = None) -> torch.dtype:
    """A torch dtype from a dtype or its name; ``"auto"`` (transformers 5's default) is the dtype the
    checkpoint's config.json declares."""
    if dtype == "auto" and config is not None:
        dtype = config.torch_dtype
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise CheckpointError(f"dtype={dtype!r} is not supported: pass dtype=torch.float32, torch.bfloat16 or "
                          f"torch.float16 (or the strings 'float32', 'bfloat16', 'float16', or 'auto' for the "
                          f"dtype in config.json).")


def resolve_device(device: torch.device | str) -> torch.device:
    """A torch device that exists on this machine (one-line error otherwise)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a torch device ({exc}); pass e.g. 'cpu' or 'cuda'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={str(device)!r}: this torch ({torch.__version__}) sees no CUDA GPU (CPU-only "
                         f"build or no driver). Use device='cpu', or install a CUDA build of torch on a GPU machine.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return device


# ---------------------------------------------------------------------------------------------- key tables
def _layer_keys(i: int) -> dict[str, str]:
    """canonical names of hybrid layer i, by role"""
    p = f"model.layers.{i}."
    return {"attn": p + "self_attn.", "router": p + "mlp.router.", "experts": p + "mlp.experts.", "layer": p}


RESIDUAL = ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias")


def _router_keys(t: dict, src: str, dst: str, layer: int, states: str, norm: str, mlp: tuple[str, str, str]) -> None:
    """The router of hybrid layer ``layer``: checkpoint prefix ``src``, its names for the EDA scale, the norm
    and the three MLP linears (fc1, fc2, out_proj; out_proj has no bias)."""
    t[src + "down_proj.weight"] = (dst + "down_proj.weight", None)
    t[src + "down_proj.bias"] = (dst + "down_proj.bias", None)
    if layer > 0:  # the first MoE layer has no incoming router state
        t[src + states] = (dst + "states_scale", None)
    t[src + norm] = (dst + "norm.weight", None)
    for name, ours in zip(mlp, ("fc1", "fc2", "out_proj")):
        t[src + f"{name}.weight"] = (dst + f"{ours}.weight", None)
        if ours != "out_proj":
            t[src + f"{name}.bias"] = (dst + f"{ours}.bias", None)
    t[src + "balancing_biases"] = (dst + "balancing_biases", None)


def _expert_keys(t: dict, cfg: ZayaConfig, modules: dict[str, tuple[str, object]]) -> None:
    """Per-expert checkpoint modules -> (canonical stacked weight, index): dense ones store ``.weight``,
    quantized ones (config.json's quantization_config) their format's codes and scale (quantization.py)."""
    names = SERIALIZED.get(cfg.expert_quantization)
    for module, (target, index) in modules.items():
        if names is None:
            t[module + ".weight"] = (target, index)
        else:
            t[f"{module}.{names[0]}"] = (target + ".codes", index)
            t[f"{module}.{names[1]}"] = (target + ".scale", index)


def hf_key_table(cfg: ZayaConfig, stacked_experts: bool = False) -> dict[str, tuple[str, object]]:
    """HF-layout checkpoint key -> (canonical name, index). Quantized experts are per-expert modules as
    compressed-tensors writes them, or with ``stacked_experts`` (fp8) one tensor per layer and projection,
    ``mlp.experts.gate_up_proj`` [E, 2I, H] + ``.weight_scale`` [E, 2I, 1], as ZAYA1-8B-FP8-Experts stores them
    (test/data/configs/README.md)."""
    half = cfg.num_key_value_heads * cfg.head_dim // 2
    t: dict[str, tuple[str, object]] = {
        "model.embed_tokens.weight": ("model.embed_tokens.weight", None),
        "model.input_hidden_states_scale": ("model.input_scale.hidden_states_scale", None),
        "model.input_hidden_states_bias": ("model.input_scale.hidden_states_bias", None),
        "model.norm.weight": ("model.norm.weight", None),
    }
    for i in range(cfg.num_hidden_layers):
        k, s = _layer_keys(i), f"model.layers.{i}."
        t[s + "input_layernorm.weight"] = (k["layer"] + "input_layernorm.weight", None)
        t[s + "post_attention_layernorm.weight"] = (k["layer"] + "post_attention_layernorm.weight", None)
        for proj in ("q_proj", "k_proj"):
            t[s + f"self_attn.qkv_proj.{proj}.weight"] = (k["attn"] + f"{proj}.weight", None)
        t[s + "self_attn.qkv_proj.v_proj_current.weight"] = (k["attn"] + "v_proj.weight", slice(0, half))
        t[s + "self_attn.qkv_proj.v_proj_delayed.weight"] = (k["attn"] + "v_proj.weight", slice(half, 2 * half))
        for conv in ("conv_qk_depthwise", "conv_qk_grouped"):
            for part in ("weight", "bias"):
                t[s + f"self_attn.qkv_proj.{conv}.{part}"] = (k["attn"] + f"{conv}.{part}", None)
        t[s + "self_attn.qk_norm.temp"] = (k["attn"] + "temp", None)
        t[s + "self_attn.o_proj.weight"] = (k["attn"] + "o_proj.weight", None)
        for merge in ("post_attention_residual_scale", "post_mlp_residual_scale"):
            for name in RESIDUAL:
                t[s + f"{merge}.{name}"] = (k["layer"] + f"{merge}.{name}", None)
        _router_keys(t, s + "mlp.gate.", k["router"], i, "router_states_scale", "router_mlp.norm.weight",
                     ("router_mlp.fc1", "router_mlp.fc2", "router_mlp.out_proj"))
        if cfg.expert_quantization is None or stacked_experts:
            for proj in ("gate_up_proj", "down_proj"):
                suffix = ".codes" if stacked_experts else ""
                t[s + f"mlp.experts.{proj}"] = (k["experts"] + proj + suffix, None)
                if stacked_experts:
                    t[s + f"mlp.experts.{proj}.weight_scale"] = (k["experts"] + proj + ".scale", None)
        else:  # compressed-tensors stores one module per expert projection (transformers' per-expert names)
            size = cfg.moe_intermediate_size
            gate_up, down = k["experts"] + "gate_up_proj", k["experts"] + "down_proj"
            _expert_keys(t, cfg, {name: entry for e in range(cfg.num_experts) for name, entry in (
                (f"{s}mlp.experts.{e}.gate_proj", (gate_up, (e, slice(0, size)))),
                (f"{s}mlp.experts.{e}.up_proj", (gate_up, (e, slice(size, 2 * size)))),
                (f"{s}mlp.experts.{e}.down_proj", (down, e)))})
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = ("lm_head.weight", None)
    return t


def original_key_table(cfg: ZayaConfig) -> dict[str, tuple[str, object]]:
    half = cfg.num_key_value_heads * cfg.head_dim // 2
    layers = cfg.num_hidden_layers
    t: dict[str, tuple[str, object]] = {
        "model.embed_tokens.weight": ("model.embed_tokens.weight", None),
        "model.layers.0.res_scale.hidden_states_scale": ("model.input_scale.hidden_states_scale", None),
        "model.layers.0.res_scale.hidden_states_bias": ("model.input_scale.hidden_states_bias", None),
        "model.final_norm.weight": ("model.norm.weight", None),
    }
    for i in range(layers):
        k, a, m = _layer_keys(i), f"model.layers.{2 * i}.", f"model.layers.{2 * i + 1}."
        t[a + "input_norm.weight"] = (k["layer"] + "input_layernorm.weight", None)
        t[a + "self_attn.qkv.linear_q.weight"] = (k["attn"] + "q_proj.weight", None)
        t[a + "self_attn.qkv.linear_k.weight"] = (k["attn"] + "k_proj.weight", None)
        t[a + "self_attn.qkv.val_proj1.weight"] = (k["attn"] + "v_proj.weight", slice(0, half))
        t[a + "self_attn.qkv.val_proj2.weight"] = (k["attn"] + "v_proj.weight", slice(half, 2 * half))
        for idx, conv in enumerate(("conv_qk_depthwise", "conv_qk_grouped")):
            for part in ("weight", "bias"):
                t[a + f"self_attn.qkv.conv_qk.{idx}.{part}"] = (k["attn"] + f"{conv}.{part}", None)
        t[a + "self_attn.qkv.temp"] = (k["attn"] + "temp", None)
        t[a + "self_attn.o_proj.weight"] = (k["attn"] + "o_proj.weight", None)
        # half-layer n merges the output of half-layer n - 1 with its own res_scale
        closing = f"model.layers.{2 * i + 2}.res_scale." if i < layers - 1 else "model.res_scale."
        for name in RESIDUAL:
            t[m + f"res_scale.{name}"] = (k["layer"] + f"post_attention_residual_scale.{name}", None)
            t[closing + name] = (k["layer"] + f"post_mlp_residual_scale.{name}", None)
        t[m + "input_norm.weight"] = (k["layer"] + "post_attention_layernorm.weight", None)
        _router_keys(t, m + "zaya_block.router.", k["router"], i, "router_states_scale", "rmsnorm_eda.weight",
                     ("router_mlp.0", "router_mlp.2", "router_mlp.4"))
        _expert_keys(t, cfg, {name: entry for e in range(cfg.num_experts) for name, entry in (
            (m + f"zaya_block.experts.local_experts.{e}.linear_fc1", (k["experts"] + "gate_up_proj", e)),
            (m + f"zaya_block.experts.local_experts.{e}.linear_fc2", (k["experts"] + "down_proj", e)))})
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = ("lm_head.weight", None)
    return t


KEY_TABLES = {"hf": hf_key_table, "original": original_key_table}


def key_table(cfg: ZayaConfig, present: set[str]) -> dict[str, tuple[str, object]]:
    """The key table of a checkpoint holding the keys ``present``: its layout's, with fp8 experts stacked per
    layer when the checkpoint stores them so."""
    if cfg.layout == "hf" and cfg.expert_quantization == FP8 and "model.layers.0.mlp.experts.gate_up_proj" in present:
        return hf_key_table(cfg, stacked_experts=True)
    return KEY_TABLES[cfg.layout](cfg)


def derived_tensors(cfg: ZayaConfig) -> dict[str, torch.Tensor]:
    """Canonical tensors that are not in any checkpoint: which value channels come from the previous token."""
    channels = cfg.num_key_value_heads * cfg.head_dim
    delayed = (torch.arange(channels) >= channels // 2).to(torch.float32)
    return {f"model.layers.{i}.self_attn.value_delayed": delayed for i in range(cfg.num_hidden_layers)}


# ---------------------------------------------------------------------------------------------- files
def checkpoint_files(path: Path) -> dict[str, Path]:
    """checkpoint key -> file that holds it, from the index or from the safetensors files' headers."""
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {path} does not exist.")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise TypeError("'weight_map' must map tensor names to file names")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc!r}); it needs a "
                                  f"'weight_map' object. Restore it from the original checkpoint.") from None
        outside = sorted({f for f in weight_map.values()
                          if Path(f).is_absolute() or ".." in Path(f).parts or not f.endswith(".safetensors")})
        if outside:
            raise CheckpointError(f"{index} names file(s) {outside} that are not *.safetensors files inside {path}; "
                                  f"an index may only name shards in its own directory. Restore the original index.")
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise CheckpointNotFoundError(f"{index} names shard(s) that do not exist in {path}: {missing}. "
                                          f"Download the missing shard(s).")
        return {key: path / file for key, file in weight_map.items()}
    single = path / "model.safetensors"
    files = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f" Found {others}: pickled weights are never loaded (they can run code); convert them to "
                f"safetensors first." if others else "")
        raise CheckpointNotFoundError(f"no *.safetensors files in {path}.{hint}")
    keys: dict[str, Path] = {}
    for file in files:
        with _open(file) as f:
            for key in f.keys():
                keys[key] = file
    return keys


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file ({exc}). It is probably truncated "
                              f"or corrupt: download it again.") from None


def _runs(file: Path, keys: list[str]) -> list[list[str]]:
    """``keys`` of ``file`` in runs of at most the largest tensor's bytes. The pages of a memory-mapped file
    count as resident memory until it is closed, so reading each run through its own mapping keeps the peak
    near one model plus one tensor instead of one model plus the whole file."""
    with _open(file) as f:
        held = set(f.keys())  # a key the file lacks is reported when it is read
        slices = [f.get_slice(key) if key in held else None for key in keys]
        sizes = [0 if s is None else math.prod(s.get_shape()) * _ITEM_BYTES.get(s.get_dtype(), 8) for s in slices]
    budget, runs, run_bytes = max(sizes), [], 0
    for key, size in zip(keys, sizes):
        if not runs or run_bytes + size > budget:
            runs.append([])
            run_bytes = 0
        runs[-1].append(key)
        run_bytes += size
    return runs


def _summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_keys(cfg: ZayaConfig, table: dict, present: set[str], path: Path) -> None:
    other = KEY_TABLES["hf" if cfg.layout == "original" else "original"](cfg)
    foreign = sorted(k for k in present if k in other and k not in table)
    if foreign:
        raise CheckpointError(f"{path}: config.json is in the {cfg.layout} layout but the weights include "
                              f"{len(foreign)} key(s) of the other layout ({_summarise(foreign, 4)}). Both layouts "
                              f"are mixed in one checkpoint: keep one layout's files and config.")
    tolerated = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(k for k in present - set(table) if k not in tolerated and not k.endswith(_IGNORED_SUFFIXES))
    missing = sorted(set(table) - present)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_summarise(unexpected)}")
        if any(k.endswith(_QUANTIZED_SUFFIXES) for k in unexpected):
            problems.append("quantized tensors outside the experts (or without a quantization_config in "
                            "config.json) are not supported: only expert weights may be fp8 / mxfp4")
    if problems:
        raise CheckpointError(f"{path}: the weights do not match config.json ({cfg.layout} layout, "
                              f"{cfg.num_hidden_layers} layers, {cfg.num_experts} experts): " + "; ".join(problems)
                              + ". Check that config.json belongs to these weights and that no shard is missing.")


class _Destinations:
    """Where each canonical tensor of the key table is written. Without ``complete``: the model's own
    storage. With it (a model on the meta device): a CPU tensor of the target's shape, handed to
    ``complete(name, tensor)`` once the last checkpoint key filling it has been read, then dropped, so the
    caller keeps what it needs of each (one rank's shard) and memory holds one canonical tensor at a time.
    Experts the model holds quantized while the checkpoint stores them dense (``expert_dtype``) are quantized
    into their codes and scales here."""

    def __init__(self, model: torch.nn.Module, table: dict, complete=None):
        self.params = dict(model.named_parameters()) | dict(model.named_buffers())
        self.quantizing = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedWeight)}
        self.complete, self.filling = complete, {}
        self.left = Counter(target for target, _ in table.values())

    def storage(self, name: str) -> torch.Tensor:
        if self.complete is None:
            return self.params[name].data
        if name not in self.filling:
            self.filling[name] = torch.empty_like(self.params[name], device="cpu")
        return self.filling[name]

    def shape_of(self, target: str, index) -> torch.Tensor:
        """A tensor of the shape and dtype ``target[index]`` takes (for the loader's checks)."""
        if target in self.quantizing:
            dest = torch.empty(self.quantizing[target].shape, device="meta")
            return dest if index is None else dest[index]
        return self.storage(target) if index is None else self.storage(target)[index]

    def write(self, target: str, index, tensor: torch.Tensor) -> None:
        if target in self.quantizing:
            names = [f"{target}.codes", f"{target}.scale"]
            _write_fp8(*map(self.storage, names), index, tensor)  # the only format with_expert_dtype allows
        else:
            names = [target]  # copied: a tensor read may be a view of the file's memory map
            (self.storage(target) if index is None else self.storage(target)[index]).copy_(tensor)
        self.left[target] -= 1
        if self.complete is not None and not self.left[target]:
            for name in names:
                self.complete(name, self.filling.pop(name))

    def derived(self, name: str, tensor: torch.Tensor) -> None:
        if self.complete is None:
            self.params[name].data.copy_(tensor)
        else:
            self.complete(name, tensor.to(self.params[name].dtype))


def load_into(model: torch.nn.Module, cfg: ZayaConfig, path: str | Path, check_finite: bool = False,
              complete=None) -> None:
    """Fill ``model``'s canonical parameters from the checkpoint at ``path``, one tensor at a time; or, with
    ``complete`` and ``model`` on the meta device, hand each canonical tensor to ``complete(name, tensor)``
    as soon as it is whole (per-rank loading: ``_Destinations``)."""
    path = Path(path)
    files = checkpoint_files(path)
    table = key_table(cfg, set(files))
    _check_keys(cfg, table, set(files), path)
    destinations = _Destinations(model, table, complete)
    by_file: dict[Path, list[str]] = {}
    for key in table:
        by_file.setdefault(files[key], []).append(key)
    runs = [(file, run) for file, keys in by_file.items() for run in _runs(file, keys)]
    from tqdm.auto import tqdm

    with tqdm(total=len(table), desc="loading weights", unit="tensor", disable=len(table) < 200) as bar:
        for file, run in runs:
            with _open(file) as f:
                for key in run:
                    target, index = table[key]
                    dest = destinations.shape_of(target, index)
                    try:
                        dtype = f.get_slice(key).get_dtype()
                    except (SafetensorError, OSError) as exc:
                        raise CheckpointError(f"{path / 'model.safetensors.index.json'} maps tensor {key!r} to "
                                              f"{file.name}, but that file does not hold it ({exc}). Restore the "
                                              f"original index and shards.") from None
                    stored = _STORAGE_OF.get(dest.dtype, _FLOAT_STORAGE)
                    if dtype not in stored and stored is _FLOAT_STORAGE:
                        raise CheckpointError(f"{file}: tensor {key!r} is stored as {dtype}; only float32, "
                                              f"bfloat16, float16 and float64 weights are supported, and quantized "
                                              f"experts declared by config.json's quantization_config (fp8 / "
                                              f"mxfp4). Use the original floating-point weights.")
                    if dtype not in stored:
                        raise CheckpointError(f"{file}: tensor {key!r} is stored as {dtype}, but config.json's "
                                              f"quantization_config ({cfg.expert_quantization} experts) implies "
                                              f"{sorted(stored)}. Check that config.json belongs to these weights.")
                    try:
                        tensor = f.get_tensor(key)
                    except (SafetensorError, OSError, RuntimeError) as exc:
                        raise CheckpointError(f"{file}: cannot read tensor {key!r} ({exc}); the file is truncated "
                                              f"or corrupt: download it again.") from None
                    per_tensor_scale = target.endswith(".scale") and tensor.numel() == 1  # fp8 'tensor' strategy
                    if tuple(tensor.shape) != tuple(dest.shape) and not per_tensor_scale:
                        raise CheckpointError(f"{file}: tensor {key!r} has shape {list(tensor.shape)}, but "
                                              f"config.json implies {list(dest.shape)}. Check that config.json "
                                              f"belongs to these weights.")
                    if check_finite and stored is _FLOAT_STORAGE and not torch.isfinite(tensor).all():
                        raise CheckpointError(f"{file}: tensor {key!r} contains NaN or inf values; the checkpoint "
                                              f"is damaged: download it again.")
                    destinations.write(target, index, tensor)
                    bar.update()
    for key, tensor in derived_tensors(cfg).items():
        destinations.derived(key, tensor)


def _write_fp8(codes: torch.Tensor, scales: torch.Tensor, index, dense: torch.Tensor) -> None:
    """Quantize ``dense`` (the stored dtype's values) to fp8 into ``codes`` and ``scales`` at ``index``, one
    expert at a time for a stacked tensor (bounded scratch memory)."""
    for e, part in enumerate(dense.unbind(0) if index is None else [dense]):
        where = e if index is None else index
        part_codes, part_scale = quantize_fp8(part)
        codes[where].copy_(part_codes)
        scales[where].copy_(part_scale)


def load_model(cls, path, dtype=torch.float32, device="cpu", check_finite: bool = False,
               expert_dtype: str | None = None, **config_overrides):
    """Build ``cls`` (ZayaForCausalLM) from a checkpoint directory: weights allocated once, in ``dtype``, on
    ``device``, then filled tensor by tensor (peak memory ~ one model + the largest tensor). ``expert_dtype``
    "fp8" holds dense experts as fp8 codes and row scales (ZayaConfig.with_expert_dtype)."""
    path = Path(path)
    if path.exists() and not path.is_dir():  # a missing path is reported by ZayaConfig.from_pretrained
        raise CheckpointNotFoundError(f"{path} is a file, not a checkpoint directory. Pass the directory that holds "
                                      f"config.json and the *.safetensors files (here probably {path.parent}).")
    device = resolve_device(device)
    if dtype != "auto":
        dtype = resolve_dtype(dtype)  # a bad dtype is reported before config.json is read
    cfg = ZayaConfig.from_pretrained(path, **config_overrides)
    if dtype == "auto":
        dtype = resolve_dtype(dtype, cfg)
    model = cls.empty(cfg.with_expert_dtype(expert_dtype, str(path)), dtype=dtype, device=device)
    load_into(model, cfg, path, check_finite=check_finite)
    model.eval()
    model.generation_config = GenerationDefaults.from_pretrained(path)
    return model
