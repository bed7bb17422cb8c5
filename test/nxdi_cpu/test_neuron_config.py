"""ZAYA1's NxDI configuration against NxDI / NxD's own code: the modes it refuses with a one-line error, the
NxD state allocation it must fit (``NEURON_COMBINE_KV_ALLOCATIONS``), the NxDI version gate, and what
``zaya1 compile``'s flags put into NxDI's config."""
from __future__ import annotations

import warnings

import pytest

pytest.importorskip("neuronx_distributed_inference", reason="NxDI is not installed: run the NxDI CPU stage in the "
                                                            "environment of scripts/nxdi_cpu_env.sh")
import torch  # noqa: E402
from neuronx_distributed.trace.model_builder import _check_weight_name_regex  # noqa: E402
from neuronx_distributed.trace.spmd import StateInitializer  # noqa: E402
from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig  # noqa: E402

import cases  # noqa: E402
from zaya1.config import ZayaConfig  # noqa: E402
from zaya1.errors import ConfigError  # noqa: E402
from zaya1.neuron import NeuronZayaForCausalLM, ZayaInferenceConfig, ZayaNeuronConfig  # noqa: E402
from zaya1.neuron.compile_cli import neuron_config, parse_args  # noqa: E402
from zaya1.neuron.modeling import ZayaCacheManager, check_nxdi_version  # noqa: E402

BASE = dict(tp_degree=1, batch_size=2, seq_len=64, max_context_length=32, torch_dtype=torch.float32)


def refusal(**kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        ZayaNeuronConfig(**{**BASE, **kwargs})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_async_mode_is_refused():
    assert refusal(async_mode=True).startswith("async_mode=True is not supported for ZAYA1")


def test_continuous_batching_keeps_absent_rows_masked():
    """Continuous batching turns on NxDI's apply_seq_ids_mask (absent rows get seq_id -1: case_absent_rows in
    cases.py shows what happens without it); turning it off is refused."""
    assert ZayaNeuronConfig(**BASE, is_continuous_batching=True, ctx_batch_size=1).apply_seq_ids_mask
    assert not ZayaNeuronConfig(**BASE).apply_seq_ids_mask
    assert refusal(is_continuous_batching=True, ctx_batch_size=1, apply_seq_ids_mask=False).startswith(
        "apply_seq_ids_mask=False with continuous batching")


def test_context_batch_without_continuous_batching_is_the_batch():
    assert refusal(ctx_batch_size=1).startswith("ctx_batch_size=1 without continuous batching")


def state_shapes(layers: int) -> tuple[dict, dict]:
    """What NxD's StateInitializer receives for ZAYA1's aliased state: names and shapes of the cache
    manager's parameters in their order (K/V per layer, then the CCA state), at real widths."""
    zaya = ZayaConfig(num_hidden_layers=layers, max_position_embeddings=4096)
    config = ZayaInferenceConfig(ZayaNeuronConfig(**BASE), load_config=lambda c: setattr(c, "zaya", zaya.to_dict()))
    manager = ZayaCacheManager(config, num_kv_head=config.num_key_value_heads)
    params = {f"kv_mgr.past_key_values.{i}": p for i, p in enumerate(manager.past_key_values)}
    return {k: list(p.shape) for k, p in params.items()}, {k: p.dtype for k, p in params.items()}


@pytest.mark.parametrize("layers", [2, 3])
def test_combined_kv_allocations(layers, monkeypatch):
    """NEURON_COMBINE_KV_ALLOCATIONS: NxD pairs the aliased past_key_values in twos (trace/spmd.py). With an even
    layer count every pair has one shape (K_i/V_i, conv_i/conv_i+1, value_i/value_i+1) and NxD accepts them;
    with an odd one it pairs a conv state with a value state and raises, so ZAYA1's config refuses it first."""
    shapes, dtypes = state_shapes(layers)
    if layers % 2 == 0:
        pairs = StateInitializer(dict(shapes), dict(dtypes), 1, combine_kv_on_device=True).kv_cache_keys_map
        assert len(pairs) == len(shapes) // 2
        assert all(shapes[k] == shapes[v] for k, v in pairs.values())
    else:
        with pytest.raises(ValueError, match="Could not combine KV allocations"):
            StateInitializer(dict(shapes), dict(dtypes), 1, combine_kv_on_device=True)
    monkeypatch.setenv("NEURON_COMBINE_KV_ALLOCATIONS", "1")
    if layers % 2 == 0:
        state_shapes(layers)
    else:
        with pytest.raises(ConfigError, match="Unset NEURON_COMBINE_KV_ALLOCATIONS"):
            state_shapes(layers)


def test_nxdi_version_gate():
    """The installed NxDI (the vendored source) and Neuron SDK 2.29's release are tested: silent; a release
    zaya1 was not tested with warns once, naming it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_nxdi_version()
        check_nxdi_version("0.9.17334")
    with pytest.warns(UserWarning, match=r"neuronx-distributed-inference 0\.10\.18399 is not a release"):
        check_nxdi_version("0.10.18399")


def compile_args(*extra: str):
    return parse_args(["--model-path", str(cases.golden_dir("gqa", "hf")), "--compiled-model-path", "unused",
                       "--tp-degree", "1", *extra])


def test_compile_flags_sampling_and_layout_exclusions():
    """``zaya1 compile --on-device-sampling greedy|sample --skip-layout-optimization REGEX`` reach NxDI's config,
    and the documented experts regex selects exactly the expert weights of the NxDI model, resolved the way
    NxD's ModelBuilder resolves it (trace/model_builder.py ``_check_weight_name_regex``)."""
    experts = r"model\.layers\.\d+\.mlp\.experts\..*"
    sample = neuron_config(compile_args("--on-device-sampling", "sample", "--skip-layout-optimization", experts))
    assert sample.on_device_sampling_config.do_sample and sample.on_device_sampling_config.dynamic
    assert sample.weights_to_skip_layout_optimization == [experts]
    assert not neuron_config(compile_args("--on-device-sampling", "greedy")).on_device_sampling_config.do_sample
    assert neuron_config(compile_args()).on_device_sampling_config is None
    model = cases.neuron_model(cases.golden_dir("gqa", "hf"), 1)
    names = [name for name, _ in model.models[0].model.named_parameters()]
    skipped = _check_weight_name_regex({experts}, {name: i for i, name in enumerate(names)})
    assert skipped and skipped == {name for name in names if ".mlp.experts." in name}


def test_on_device_sampling_refuses_top_k_beyond_global_topk():
    """NxDI's sampler draws from its global_topk (256) most likely tokens at most: on the golden model's
    vocabulary of 384, top_k 300 or no top_k is refused before anything runs; top_k 256 samples."""
    model = cases.neuron_model(cases.golden_dir("gqa", "hf"), 1,
                               on_device_sampling_config=OnDeviceSamplingConfig(do_sample=True, dynamic=True))
    prompts = cases.golden("gqa")["a_input_ids"]
    assert model.config.vocab_size > model.neuron_config.on_device_sampling_config.global_topk == 256
    for top_k in (0, 300):
        message = cases.refusal(model, prompts, do_sample=True, top_k=top_k, max_new_tokens=2)
        assert "global_topk" in message and "top_k <= 256" in message and "\n" not in message, message
    assert cases.refusal(model, prompts, do_sample=True, top_k=256, max_new_tokens=2, seed=0) == ""


def test_automatic_context_buckets_stop_at_512():
    """vllm-neuron's defaults for ``--max-model-len 4096`` (max_context_length = seq_len = 4096, bucketing on, no
    buckets given): the context-encoding submodel NxDI's constructor builds gets NxDI's own automatic buckets
    up to 512 (the longest prompt is 512, with a warning); buckets given in the config (vLLM:
    override_neuron_config) are taken as they are."""
    path = str(cases.golden_dir("gqa", "hf"))
    vllm_neuron = dict(tp_degree=1, batch_size=2, ctx_batch_size=1, is_continuous_batching=True, seq_len=4096,
                       max_context_length=4096, enable_bucketing=True, torch_dtype=torch.float32)

    def context_buckets(**changes) -> list[int]:
        config = ZayaInferenceConfig.from_checkpoint(path, ZayaNeuronConfig(**{**vllm_neuron, **changes}))
        return list(NeuronZayaForCausalLM(path, config).context_encoding_model.neuron_config.buckets)

    with pytest.warns(UserWarning, match="caps the longest prompt at 512"):
        assert context_buckets() == [128, 256, 512]
    assert context_buckets(context_encoding_buckets=[512, 1024]) == [512, 1024]
